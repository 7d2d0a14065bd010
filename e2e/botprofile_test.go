//go:build e2e

package e2e_test

import (
	"context"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/custodian-matrix/custodian/e2e"
)

// TestBotDisplayNameAtFirstStart: on a fresh Synapse, the first start of Custodian sets the bot's
// display name (appservice.bot_displayname), as read back through the profile API, and logs no
// failure to do so.
func TestBotDisplayNameAtFirstStart(t *testing.T) {
	e2e.RunBackends(t, func(t *testing.T, backend e2e.Backend) {
		env := e2e.New(t, backend)
		alice := env.Register(t, "alice")
		e2e.Eventually(t, 30*time.Second, func() error {
			ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
			defer cancel()
			profile, err := alice.GetDisplayName(ctx, env.BotUserID())
			if err != nil {
				return fmt.Errorf("reading the bot's display name: %w", err)
			}
			if profile.DisplayName != "Custodian" {
				return fmt.Errorf("the bot's display name is %q, want %q", profile.DisplayName, "Custodian")
			}
			return nil
		})
		for _, line := range strings.Split(env.CustodianLog(t), "\n") {
			if strings.Contains(line, "isplayname") && strings.Contains(line, "Failed") {
				t.Errorf("the log reports a display name failure: %s", line)
			}
		}
	})
}
