package astest

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"sync/atomic"
	"time"

	"maunium.net/go/mautrix/id"
)

// deliveryTimeout bounds one transaction the fake pushes to the appservice.
const deliveryTimeout = 10 * time.Second

// ToDeviceDelivery says where [FakeHomeserver.DeliverToDevice] pushes to-device messages.
type ToDeviceDelivery struct {
	// URL returns the appservice's base URL at the time of delivery (the listener may start
	// after the delivery is set up).
	URL func() string
	// HSToken is the registration's hs_token, sent as the bearer token.
	HSToken string
	// Ours reports whether a recipient is one of the appservice's users.
	Ours func(id.UserID) bool
}

// DeliverToDevice makes the fake push every to-device message sent to one of the appservice's
// users to the appservice, in a transaction of its own under MSC2409's unstable field
// (de.sorunome.msc2409.to_device), as Synapse does with msc2409_to_device_messages_enabled. It
// replaces any [FakeHomeserver.OnToDevice] callback. The transaction is pushed from the
// sendToDevice request's goroutine after that request was answered. Delivered counts the
// transactions the appservice accepted; a failed push is counted in DeliveryFailures and not
// retried.
func (hs *FakeHomeserver) DeliverToDevice(to ToDeviceDelivery) {
	client := &http.Client{Timeout: deliveryTimeout}
	hs.OnToDevice(func(msg ToDeviceMessage) {
		if !to.Ours(msg.UserID) {
			return
		}
		if err := hs.pushToDevice(client, to, msg); err != nil {
			hs.deliveryFailures.Add(1)
			return
		}
		hs.delivered.Add(1)
	})
}

// PushToDevice pushes msg to the appservice now, in a transaction of its own as
// [FakeHomeserver.DeliverToDevice] does: a test uses it to deliver a message the fake recorded
// earlier (see [FakeHomeserver.ToDeviceMessages]) late, as a homeserver does after backing off.
// It is not counted in Delivered; it returns the push's error.
func (hs *FakeHomeserver) PushToDevice(to ToDeviceDelivery, msg ToDeviceMessage) error {
	return hs.pushToDevice(&http.Client{Timeout: deliveryTimeout}, to, msg)
}

// Delivered returns how many to-device transactions [FakeHomeserver.DeliverToDevice] pushed
// and the appservice accepted.
func (hs *FakeHomeserver) Delivered() int64 { return hs.delivered.Load() }

// DeliveryFailures returns how many to-device transactions the appservice did not accept.
func (hs *FakeHomeserver) DeliveryFailures() int64 { return hs.deliveryFailures.Load() }

// deliveryCounters count [FakeHomeserver.DeliverToDevice]'s pushes.
type deliveryCounters struct {
	seq, delivered, deliveryFailures atomic.Int64
}

func (hs *FakeHomeserver) pushToDevice(client *http.Client, to ToDeviceDelivery, msg ToDeviceMessage) error {
	body, err := json.Marshal(map[string]any{
		"events": []any{},
		"de.sorunome.msc2409.to_device": []map[string]any{{
			"type": msg.Type, "sender": msg.Sender, "to_user_id": msg.UserID, "to_device_id": msg.DeviceID,
			"content": msg.Content,
		}},
	})
	if err != nil {
		return err
	}
	ctx, cancel := context.WithTimeout(context.Background(), deliveryTimeout)
	defer cancel()
	txnID := fmt.Sprintf("fake-to-device-%d", hs.seq.Add(1))
	req, err := http.NewRequestWithContext(ctx, http.MethodPut, to.URL()+"/_matrix/app/v1/transactions/"+txnID, bytes.NewReader(body))
	if err != nil {
		return err
	}
	req.Header.Set("Authorization", "Bearer "+to.HSToken)
	req.Header.Set("Content-Type", "application/json")
	resp, err := client.Do(req)
	if err != nil {
		return err
	}
	_ = resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return fmt.Errorf("transaction %s: status %d", txnID, resp.StatusCode)
	}
	return nil
}
