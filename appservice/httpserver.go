package appservice

import (
	"io"
	"log"
	"net/http"
	"time"
)

// Limits every HTTP server of Custodian shares (see [NewHTTPServer]).
const (
	// httpReadHeaderTimeout bounds how long a client may take to send its request headers, so a
	// slow client (slowloris) cannot hold connections open.
	httpReadHeaderTimeout = 10 * time.Second
	// httpIdleTimeout bounds how long a keep-alive connection may sit idle.
	httpIdleTimeout = time.Minute
	// httpMaxHeaderBytes bounds request headers. Homeservers, webhook senders, media fetchers
	// and admins send a few hundred bytes; 16 KiB leaves room for long tokens and URLs.
	httpMaxHeaderBytes = 16 << 10
)

// NewHTTPServer returns the hardened [http.Server] every listener of Custodian and its bridges
// uses (the Application Service API, metrics, the admin API, the webhook listener, the IRC media
// proxy): request headers must arrive within 10 s and fit in 16 KiB, idle keep-alive connections
// close after a minute, a request's body must be read within readTimeout and its response written
// within writeTimeout, and the server's own error log, whose lines name callers' addresses
// (TLS noise, malformed requests), is discarded. Both timeouts must be positive; bound request
// bodies in the handler (http.MaxBytesReader). The caller serves it on its listener and shuts it
// down.
func NewHTTPServer(handler http.Handler, readTimeout, writeTimeout time.Duration) *http.Server {
	if readTimeout <= 0 || writeTimeout <= 0 {
		panic("appservice: NewHTTPServer needs positive timeouts")
	}
	return &http.Server{
		Handler:           handler,
		ReadHeaderTimeout: httpReadHeaderTimeout,
		ReadTimeout:       readTimeout,
		WriteTimeout:      writeTimeout,
		IdleTimeout:       httpIdleTimeout,
		MaxHeaderBytes:    httpMaxHeaderBytes,
		ErrorLog:          log.New(io.Discard, "", 0),
	}
}
