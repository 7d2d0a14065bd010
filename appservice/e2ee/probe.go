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

// MaxOutstandingProbes is how many of a [ProbeRun]'s probes are waited for at once: the run's
// most recent ones. An older probe that comes back is ignored.
const MaxOutstandingProbes = 64

// probeNonceField is the content field carrying a probe's nonce.
const probeNonceField = "nonce"

// probes are the delivery probes sent and not yet received, by nonce, each with the run that
// sent it. The zero value is ready to use.
type probes struct {
	lock    sync.Mutex
	waiting map[string]*ProbeRun
}

// received reports whether evt is a probe the bot (own) sent, and if its nonce is one a run
// waits for, signals that run.
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
	if run, ok := p.waiting[nonce]; ok {
		close(run.back)
		run.forgetLocked()
	}
	return true
}

// ProbeRun is one run of delivery probes: every probe sent through it counts when it comes
// back, however late, as long as it is one of the run's last [MaxOutstandingProbes]. Its
// methods may be called concurrently with [Machine.HandleToDevice].
type ProbeRun struct {
	p      *probes
	client *mautrix.Client
	back   chan struct{}
	// nonces are the run's probes still waited for, oldest first; nil once one came back or
	// the run stopped. Guarded by p.lock.
	nonces []string
	over   bool
}

// NewProbeRun starts a run of delivery probes; send them with [ProbeRun.Send], and call
// [ProbeRun.Stop] when no longer waiting. It does no I/O.
func (m *Machine) NewProbeRun() *ProbeRun {
	return &ProbeRun{p: &m.probes, client: m.mach.Client, back: make(chan struct{})}
}

// Received returns a channel closed when [Machine.HandleToDevice] receives any of the run's
// waited-for probes back.
func (r *ProbeRun) Received() <-chan struct{} { return r.back }

// Send sends a to-device event of [ProbeEventType] with a new random nonce from the bot's
// device to itself, and waits for it along with the run's earlier probes, dropping the oldest
// beyond [MaxOutstandingProbes]. After the run received a probe or stopped, it sends nothing
// and returns nil.
func (r *ProbeRun) Send(ctx context.Context) error {
	raw := make([]byte, 16)
	if _, err := rand.Read(raw); err != nil {
		return fmt.Errorf("failed to make a probe nonce: %w", err)
	}
	nonce := hex.EncodeToString(raw)
	if !r.add(nonce) {
		return nil
	}
	_, err := r.client.SendToDevice(ctx, ProbeEventType, &mautrix.ReqSendToDevice{
		Messages: map[id.UserID]map[id.DeviceID]*event.Content{
			r.client.UserID: {r.client.DeviceID: {Raw: map[string]any{probeNonceField: nonce}}},
		},
	})
	if err != nil {
		r.remove(nonce)
		return fmt.Errorf("failed to send the to-device probe: %w", err)
	}
	return nil
}

// Stop ends the run: none of its probes is waited for any more. It may be called more than
// once.
func (r *ProbeRun) Stop() {
	r.p.lock.Lock()
	defer r.p.lock.Unlock()
	r.forgetLocked()
}

// add records nonce as waited for, dropping the oldest beyond MaxOutstandingProbes, and
// reports whether the run is still going.
func (r *ProbeRun) add(nonce string) bool {
	r.p.lock.Lock()
	defer r.p.lock.Unlock()
	if r.over {
		return false
	}
	if r.p.waiting == nil {
		r.p.waiting = make(map[string]*ProbeRun)
	}
	if len(r.nonces) >= MaxOutstandingProbes {
		delete(r.p.waiting, r.nonces[0])
		r.nonces = r.nonces[1:]
	}
	r.nonces = append(r.nonces, nonce)
	r.p.waiting[nonce] = r
	return true
}

// remove stops waiting for nonce (its send failed).
func (r *ProbeRun) remove(nonce string) {
	r.p.lock.Lock()
	defer r.p.lock.Unlock()
	delete(r.p.waiting, nonce)
	for i, n := range r.nonces {
		if n == nonce {
			r.nonces = append(r.nonces[:i], r.nonces[i+1:]...)
			break
		}
	}
}

// forgetLocked ends the run, forgetting its nonces. p.lock is held.
func (r *ProbeRun) forgetLocked() {
	for _, n := range r.nonces {
		delete(r.p.waiting, n)
	}
	r.nonces, r.over = nil, true
}
