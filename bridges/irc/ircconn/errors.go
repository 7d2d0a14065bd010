package ircconn

import (
	"errors"
	"fmt"
)

// Errors returned by [Dial] and reported by [Conn.Err]. None of them carries line contents or
// credentials, so callers may log them.
var (
	// ErrInvalidConfig is wrapped by the error [Dial] returns, before any I/O, for a
	// [Config] it cannot use (no address, an invalid nick or user name, NUL in credentials).
	// Retrying will not help; the message names the field.
	ErrInvalidConfig = errors.New("irc: invalid config")
	// ErrClosed is returned by [Conn.Send] and [Conn.Quit] once the connection is closing or
	// closed, and is [Conn.Err] after [Conn.Close] or [Conn.Quit]: the end was asked for
	// locally, so the caller should not reconnect.
	ErrClosed = errors.New("irc: connection closed")
	// ErrSASLFailed is wrapped by every [*SASLError]: the server rejected the SASL credentials
	// or aborted the exchange. Reconnecting with the same credentials will fail again; the
	// caller should tell the user and wait for new credentials.
	ErrSASLFailed = errors.New("irc: SASL authentication failed")
	// ErrSASLUnavailable is returned by [Dial] when [Config.SASL] is set but the server does
	// not offer the sasl capability, does not offer the mechanism asked for, or refuses the
	// capability. The connection was not registered: credentials are never sent in the
	// clear to a server that cannot take them.
	ErrSASLUnavailable = errors.New("irc: SASL mechanism not available")
	// ErrNickUnavailable is returned by [Dial] when the server rejected all
	// [Config.MaxNickAttempts] nicks tried during registration (433, 436, 432, 437).
	ErrNickUnavailable = errors.New("irc: no nick available")
	// ErrRegistrationTimeout is returned by [Dial] when connecting and registering took longer
	// than [Config.RegisterTimeout]. The caller should back off and retry.
	ErrRegistrationTimeout = errors.New("irc: registration timed out")
	// ErrPingTimeout is [Conn.Err] when the server did not answer a keepalive PING within
	// [Config.PingTimeout]. The caller should reconnect.
	ErrPingTimeout = errors.New("irc: ping timeout")
	// ErrServerError is wrapped by every [*ServerError]: the server sent ERROR, which ends the
	// connection (K-line, kill, server shutdown, throttling, …). The caller should reconnect
	// with backoff.
	ErrServerError = errors.New("irc: server closed the link")
)

// SASLError is returned by [Dial] when SASL authentication fails. It wraps [ErrSASLFailed].
type SASLError struct {
	// Numeric is the server's reply: "902" (nick locked), "904" (credentials rejected),
	// "905" (message too long), "906" (aborted) or "908" (mechanism not supported).
	Numeric string
}

// Error returns a message naming the numeric; it never contains the account or password.
func (e *SASLError) Error() string {
	return fmt.Sprintf("irc: SASL authentication failed (%s)", e.Numeric)
}

// Unwrap returns [ErrSASLFailed].
func (e *SASLError) Unwrap() error { return ErrSASLFailed }

// ServerError is returned by [Dial], or is [Conn.Err], when the server sent ERROR. It wraps
// [ErrServerError].
type ServerError struct {
	// Reason is the server's text, such as "Closing Link: … (K-Lined)". It may quote
	// user-supplied text (kill and ban reasons), so it is not part of Error: show it to the
	// user, do not log it.
	Reason string
}

// Error returns a fixed message without the server's text.
func (e *ServerError) Error() string { return ErrServerError.Error() }

// Unwrap returns [ErrServerError].
func (e *ServerError) Unwrap() error { return ErrServerError }
