package e2ee

import (
	"context"

	"maunium.net/go/mautrix/crypto"
	"maunium.net/go/mautrix/event"
	"maunium.net/go/mautrix/id"
)

// SetKeyShareGate sets the machine's answer to room key requests: a request from a user for
// whom gated reports true is refused (no answer is sent, so nothing tells the requester
// why); any other is judged by [Machine.keySharePolicy]. The core passes the users whose
// erasure is pending or recent. Call it before the machine handles to-device events.
func (m *Machine) SetKeyShareGate(gated func(ctx context.Context, user id.UserID) bool) {
	m.mach.AllowKeyShare = func(ctx context.Context, device *id.Device, info event.RequestedKeyInfo) *crypto.KeyShareRejection {
		if gated(ctx, device.UserID) {
			m.log.Debug().Msg("Refusing a room key request: its sender's erasure is pending or recent")
			return &crypto.KeyShareRejectNoResponse
		}
		return m.keySharePolicy(ctx, device, info)
	}
}

// keySharePolicy is the machine's judgement of a room key request from device, mautrix's usual
// one: another user gets only a session the bot sent to that very device; the bot's own devices
// other than this one get any session unless blacklisted or below ShareKeysMinTrust; this
// device itself never asks.
func (m *Machine) keySharePolicy(ctx context.Context, device *id.Device, info event.RequestedKeyInfo) *crypto.KeyShareRejection {
	mach := m.mach
	if device.UserID == mach.Client.UserID {
		switch {
		case device.DeviceID == mach.Client.DeviceID:
			return &crypto.KeyShareRejectNoResponse
		case device.Trust == id.TrustStateBlacklisted:
			return &crypto.KeyShareRejectBlacklisted
		}
		if trust, _ := mach.ResolveTrustContext(ctx, device); trust < mach.ShareKeysMinTrust {
			return &crypto.KeyShareRejectUnverified
		}
		return nil
	}
	if mach.DisableSharedGroupSessionTracking {
		return &crypto.KeyShareRejectOtherUser
	}
	sentTo, err := mach.CryptoStore.IsOutboundGroupSessionShared(ctx, device.UserID, device.IdentityKey, info.SessionID)
	if err != nil {
		m.log.Warn().Err(err).Msg("Failed to check whether a requested room key was sent to the requester")
		return &crypto.KeyShareRejectNoResponse
	}
	if sentTo {
		return nil
	}
	// Not sent to them: say so only for a session of this device; for any other, whoever sent
	// it is the one to answer.
	if igs, _ := mach.CryptoStore.GetGroupSession(ctx, info.RoomID, info.SessionID); igs != nil && igs.SenderKey == mach.OwnIdentity().IdentityKey {
		return &crypto.KeyShareRejectNotRecipient
	}
	return &crypto.KeyShareRejectNoResponse
}
