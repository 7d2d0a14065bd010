package ircdb

import (
	"context"
	"crypto/rand"
	"time"

	"go.mau.fi/util/dbutil"
	"maunium.net/go/mautrix/id"
)

// Cert is a user's client certificate for SASL EXTERNAL on one network. Certificate is the
// DER certificate (public); PrivateKey is its PKCS #8 private key sealed by the credential
// vault, which only the vault can open.
type Cert struct {
	UserID         id.UserID
	Network        string
	Fingerprint    string // SHA-256 of Certificate, lowercase hex
	Fingerprint512 string // SHA-512 of Certificate, lowercase hex
	Certificate    []byte
	PrivateKey     []byte
	RoomID         id.RoomID
	SourceEventID  id.EventID
	CreatedAt      time.Time
}

// Scan reads one irc_cert row.
func (c *Cert) Scan(row dbutil.Scannable) (*Cert, error) {
	var createdAt int64
	err := row.Scan(&c.UserID, &c.Network, &c.Fingerprint, &c.Fingerprint512, &c.Certificate, &c.PrivateKey,
		&c.RoomID, &c.SourceEventID, &createdAt)
	if err != nil {
		return nil, err
	}
	c.CreatedAt = time.UnixMilli(createdAt)
	return c, nil
}

// CertQuery reads and writes irc_cert.
type CertQuery struct {
	*dbutil.QueryHelper[*Cert]
}

const (
	certColumns  = `user_mxid, network, fingerprint, fingerprint_512, certificate, private_key, room_id, source_event_id, created_at`
	getCertQuery = `SELECT ` + certColumns + ` FROM irc_cert WHERE user_mxid=$1 AND network=$2`
	putCertQuery = `
		INSERT INTO irc_cert (` + certColumns + `) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)
		ON CONFLICT (user_mxid, network) DO UPDATE SET fingerprint=excluded.fingerprint,
			fingerprint_512=excluded.fingerprint_512, certificate=excluded.certificate,
			private_key=excluded.private_key, room_id=excluded.room_id,
			source_event_id=excluded.source_event_id, created_at=excluded.created_at
	`
	deleteCertQuery = `DELETE FROM irc_cert WHERE user_mxid=$1 AND network=$2`
)

// Get returns userID's certificate for network, or nil.
func (cq *CertQuery) Get(ctx context.Context, userID id.UserID, network string) (*Cert, error) {
	return cq.QueryOne(ctx, getCertQuery, userID, network)
}

// Put stores c, replacing the user's earlier certificate for the network. The users row must
// exist.
func (cq *CertQuery) Put(ctx context.Context, c *Cert) error {
	return cq.Exec(ctx, putCertQuery, c.UserID, c.Network, c.Fingerprint, c.Fingerprint512, c.Certificate, c.PrivateKey,
		c.RoomID, c.SourceEventID, ms(c.CreatedAt))
}

// Delete removes userID's certificate for network; it reports whether there was one.
func (cq *CertQuery) Delete(ctx context.Context, userID id.UserID, network string) (bool, error) {
	res, err := cq.GetDB().Exec(ctx, deleteCertQuery, userID, network)
	if err != nil {
		return false, err
	}
	n, err := res.RowsAffected()
	return n > 0, err
}

// KeyQuery reads and makes the bridge's own keys (irc_key).
type KeyQuery struct {
	db *dbutil.Database
}

const (
	insertKeyQuery = `INSERT INTO irc_key (name, value) VALUES ($1, $2) ON CONFLICT (name) DO NOTHING`
	getKeyQuery    = `SELECT value FROM irc_key WHERE name=$1`
)

// GetOrCreate returns the key called name, making a random one of size bytes the first time.
// Concurrent first calls (several instances starting at once) agree on one key.
func (kq *KeyQuery) GetOrCreate(ctx context.Context, name string, size int) ([]byte, error) {
	fresh := make([]byte, size)
	if _, err := rand.Read(fresh); err != nil {
		return nil, err
	}
	if _, err := kq.db.Exec(ctx, insertKeyQuery, name, fresh); err != nil {
		return nil, err
	}
	var key []byte
	if err := kq.db.QueryRow(ctx, getKeyQuery, name).Scan(&key); err != nil {
		return nil, err
	}
	return key, nil
}
