package webhook

import (
	"strings"
	"testing"

	"maunium.net/go/mautrix/event"
)

// TestOutboundWithholdsSecrets: messages that carry a secret by the core's one definition
// (host.CarriesSecret) never reach an outbound hook, in the forms the bridge's own check missed:
// only in the formatted body, below another line, behind invisible white space.
func TestOutboundWithholdsSecrets(t *testing.T) {
	const token = "token=s3cr3t-hook"
	out := "!webhook out https://example.org/hook?" + token
	forEachDialect(t, nil, func(t *testing.T, env *testEnv) {
		rc := newReceiver(t)
		_, secret := setUpOutbound(t, env, rc)
		formatted := env.message(testBob, "see the link")
		formatted.Content.Parsed.(*event.MessageEventContent).Format = event.FormatHTML
		formatted.Content.Parsed.(*event.MessageEventContent).FormattedBody = "<p><code>" + out + "</code></p>"
		for _, evt := range []*event.Event{
			formatted,
			env.message(testBob, "here it is\n"+out),
			env.message(testBob, "\u200b"+out),
			env.message(testBob, "webhook out https://example.org/hook?"+token),
		} {
			if err := env.deliver(env.ctx, evt); err != nil {
				t.Fatal(err)
			}
		}
		control := env.message(testBob, "control message")
		if err := env.deliver(env.ctx, control); err != nil {
			t.Fatal(err)
		}
		// Deliveries keep their order: the first one is the control, or a secret went out.
		got := verify(t, rc.next(t), secret)
		if got.EventID != control.ID || got.Content == nil || strings.Contains(got.Content.Body+got.Content.FormattedBody, token) {
			t.Errorf("first delivery = %+v (content %+v), want the control message", got, got.Content)
		}
		rc.none(t)
	})
}
