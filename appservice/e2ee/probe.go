package e2ee

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"fmt"
	"sync"

	"maunium.net/go/mautrix"
	"maunium.net/go/mautrix/event"
	"maunium.net/go/mautrix/id"
)

// ProbeEventType is the to-device event type of Custodian's delivery probe: the bot sends one
// to its own device at start and waits for the homeserver to hand it back in an appservice
// transaction, which it does only with MSC2409 to-device delivery enabled.
var ProbeEventType = event.Type{Type: "io.github.custodian-matrix.probe", Class: event.ToDeviceEventType}

// probeNonceField is the content field carrying a probe's nonce.
const probeNonceField = "nonce"

// probes are the delivery probes sent and not yet received. The zero value is ready to use.
type probes struct {
	lock    sync.Mutex
	waiting map[string]chan struct{}
}

// received reports whether evt is a probe the bot (own) sent, and if one is waiting for its
// nonce, signals it.
func (p *probes) received(own id.UserID, evt *event.Event) bool {
	if evt.Type.Type != ProbeEventType.Type {
		return false
	}
	if evt.Sender != own {
		// Someone else's event of our type: not a probe, and nothing for the olm machine.
		return true
	}
	nonce, _ := evt.Content.Raw[probeNonceField].(string)
	p.lock.Lock()
	defer p.lock.Unlock()
	if done, ok := p.waiting[nonce]; ok {
		close(done)
		delete(p.waiting, nonce)
	}
	return true
}

func (p *probes) add(nonce string) <-chan struct{} {
	p.lock.Lock()
	defer p.lock.Unlock()
	if p.waiting == nil {
		p.waiting = make(map[string]chan struct{})
	}
	done := make(chan struct{})
	p.waiting[nonce] = done
	return done
}

func (p *probes) remove(nonce string) {
	p.lock.Lock()
	defer p.lock.Unlock()
	delete(p.waiting, nonce)
}

// SendProbe sends a to-device event of [ProbeEventType] with a random nonce from the bot's
// device to itself. The returned channel is closed when [Machine.HandleToDevice] receives it
// back; call cancel once done waiting, received or not.
func (m *Machine) SendProbe(ctx context.Context) (received <-chan struct{}, cancel func(), err error) {
	raw := make([]byte, 16)
	if _, err = rand.Read(raw); err != nil {
		return nil, nil, fmt.Errorf("failed to make a probe nonce: %w", err)
	}
	nonce := hex.EncodeToString(raw)
	received = m.probes.add(nonce)
	cancel = func() { m.probes.remove(nonce) }
	client := m.mach.Client
	_, err = client.SendToDevice(ctx, ProbeEventType, &mautrix.ReqSendToDevice{
		Messages: map[id.UserID]map[id.DeviceID]*event.Content{
			client.UserID: {client.DeviceID: {Raw: map[string]any{probeNonceField: nonce}}},
		},
	})
	if err != nil {
		cancel()
		return nil, nil, fmt.Errorf("failed to send the to-device probe: %w", err)
	}
	return received, cancel, nil
}
