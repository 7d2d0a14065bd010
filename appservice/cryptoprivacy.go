package appservice

// evictOlmSessions drops the olm sessions the bot's crypto store keeps in memory, after an
// erasure deleted some of them from the database. It does nothing while encryption is off.
func (svc *Service) evictOlmSessions() {
	if svc.crypto != nil {
		svc.crypto.EvictOlmSessions()
	}
}
