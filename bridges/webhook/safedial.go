package webhook

import (
	"errors"
	"fmt"
	"net"
	"net/http"
	"net/netip"
	"net/url"
	"strings"
	"syscall"
	"time"
)

// errTargetNotAllowed is returned (wrapped) by the outbound dialer when the address it is about
// to connect to is not public and allow_private_targets is off.
var errTargetNotAllowed = errors.New("webhook: target address is not allowed")

// nonPublicPrefixes are address ranges outbound hooks may not reach, besides those the netip
// predicates already cover (loopback, private, link-local, multicast, unspecified).
var nonPublicPrefixes = []netip.Prefix{
	netip.MustParsePrefix("0.0.0.0/8"),       // "this network"
	netip.MustParsePrefix("100.64.0.0/10"),   // carrier-grade NAT
	netip.MustParsePrefix("192.0.0.0/24"),    // IETF protocol assignments
	netip.MustParsePrefix("192.0.2.0/24"),    // TEST-NET-1
	netip.MustParsePrefix("198.18.0.0/15"),   // benchmarking
	netip.MustParsePrefix("198.51.100.0/24"), // TEST-NET-2
	netip.MustParsePrefix("203.0.113.0/24"),  // TEST-NET-3
	netip.MustParsePrefix("240.0.0.0/4"),     // reserved, and the broadcast address
	netip.MustParsePrefix("::/96"),           // IPv4-compatible (deprecated), :: and ::1
	netip.MustParsePrefix("100::/64"),        // discard-only
	netip.MustParsePrefix("2001::/32"),       // Teredo: the IPv4 inside is obfuscated
	netip.MustParsePrefix("2001:db8::/32"),   // documentation
	netip.MustParsePrefix("fec0::/10"),       // site-local (deprecated)
}

// Prefixes of IPv6 ranges that embed an IPv4 address, which must be public too.
var (
	nat64Prefix      = netip.MustParsePrefix("64:ff9b::/96")
	nat64LocalPrefix = netip.MustParsePrefix("64:ff9b:1::/48")
	sixToFourPrefix  = netip.MustParsePrefix("2002::/16")
)

// isPublicAddr reports whether outbound hooks may connect to addr when private targets are not
// allowed. IPv4-mapped IPv6 addresses (::ffff:a.b.c.d) are judged by their IPv4 address, and so
// are NAT64 and 6to4 addresses, which reach the IPv4 address they embed.
func isPublicAddr(addr netip.Addr) bool {
	if !addr.IsValid() {
		return false
	}
	addr = addr.Unmap()
	if addr.Is6() {
		switch {
		case nat64LocalPrefix.Contains(addr):
			// Local-use NAT64 translates into the operator's own network.
			return false
		case nat64Prefix.Contains(addr):
			b := addr.As16()
			return isPublicAddr(netip.AddrFrom4([4]byte{b[12], b[13], b[14], b[15]}))
		case sixToFourPrefix.Contains(addr):
			b := addr.As16()
			return isPublicAddr(netip.AddrFrom4([4]byte{b[2], b[3], b[4], b[5]}))
		}
	}
	if addr.IsLoopback() || addr.IsPrivate() || addr.IsLinkLocalUnicast() || addr.IsLinkLocalMulticast() ||
		addr.IsInterfaceLocalMulticast() || addr.IsMulticast() || addr.IsUnspecified() {
		return false
	}
	for _, prefix := range nonPublicPrefixes {
		if prefix.Contains(addr) {
			return false
		}
	}
	return true
}

// dialControl returns a net.Dialer Control function that refuses non-public addresses unless
// allowPrivate. It runs after name resolution, on the address actually being connected to, so a
// name that resolves to a public address when checked and a private one when used (DNS
// rebinding) is still refused, and so is every redirect target.
func dialControl(allowPrivate bool) func(network, address string, _ syscall.RawConn) error {
	return func(network, address string, _ syscall.RawConn) error {
		if allowPrivate {
			return nil
		}
		if network != "tcp4" && network != "tcp6" && network != "tcp" {
			return fmt.Errorf("%w: network %s", errTargetNotAllowed, network)
		}
		addrPort, err := netip.ParseAddrPort(address)
		if err != nil || !isPublicAddr(addrPort.Addr()) {
			return errTargetNotAllowed
		}
		return nil
	}
}

// maxRedirects bounds how many 307/308 redirects one delivery follows.
const maxRedirects = 3

// newOutboundClient returns the HTTP client for outbound hooks: no proxy from the environment
// (a proxy would connect to private targets for us), the address check on every connection,
// timeouts on every phase, and redirects followed only when they keep the POST (307, 308),
// at most maxRedirects times, and only to http and https URLs.
func newOutboundClient(cfg *Config) *http.Client {
	dialer := &net.Dialer{
		Timeout:   min(cfg.Outbound.Timeout, 10*time.Second),
		KeepAlive: 30 * time.Second,
		Control:   dialControl(cfg.AllowPrivateTargets),
	}
	transport := &http.Transport{
		Proxy:                  nil,
		DialContext:            dialer.DialContext,
		ForceAttemptHTTP2:      true,
		MaxIdleConns:           100,
		MaxIdleConnsPerHost:    4,
		IdleConnTimeout:        90 * time.Second,
		TLSHandshakeTimeout:    min(cfg.Outbound.Timeout, 10*time.Second),
		ResponseHeaderTimeout:  cfg.Outbound.Timeout,
		ExpectContinueTimeout:  time.Second,
		MaxResponseHeaderBytes: 64 << 10,
	}
	return &http.Client{
		Transport: transport,
		Timeout:   cfg.Outbound.Timeout,
		CheckRedirect: func(req *http.Request, via []*http.Request) error {
			if req.Method != http.MethodPost {
				// 301, 302 and 303 would turn the delivery into a GET without a body: report
				// the redirect as the answer instead.
				return http.ErrUseLastResponse
			}
			if len(via) > maxRedirects {
				return errTooManyRedirects
			}
			if req.URL.Scheme != "http" && req.URL.Scheme != "https" {
				return errBadRedirect
			}
			return nil
		},
	}
}

var (
	errTooManyRedirects = errors.New("webhook: too many redirects")
	errBadRedirect      = errors.New("webhook: redirect to a URL that is not http or https")
)

// parseTargetURL checks a URL given to !webhook out: absolute http or https, with a host, at
// most 2048 bytes. Unless allowPrivate, a host that is an IP literal must be public (names are
// checked when connecting). The returned message is safe to show; it never quotes the URL.
func parseTargetURL(raw string, allowPrivate bool) (*url.URL, string) {
	if len(raw) > 2048 {
		return nil, "That URL is too long (2048 bytes at most)."
	}
	u, err := url.Parse(raw)
	if err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" || u.Hostname() == "" {
		return nil, "That is not an absolute http:// or https:// URL."
	}
	if !allowPrivate {
		host := strings.TrimSuffix(strings.ToLower(u.Hostname()), ".")
		if addr, err := netip.ParseAddr(host); err == nil && !isPublicAddr(addr) {
			return nil, "That URL points to a private, loopback or otherwise non-public address, which outgoing webhooks may not reach here."
		} else if host == "localhost" || strings.HasSuffix(host, ".localhost") {
			return nil, "That URL points to a private, loopback or otherwise non-public address, which outgoing webhooks may not reach here."
		}
	}
	return u, ""
}
