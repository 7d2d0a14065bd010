package appservice

import (
	"fmt"
	"testing"
	"time"
)

// TestServerBackoff checks the negative cache of sender fetches: a failed server is skipped
// until failedServerPause after its failure, and beyond failedServerEntries servers the least
// recently failed one is forgotten, while one failed again is kept.
func TestServerBackoff(t *testing.T) {
	now := time.Now()
	var b serverBackoff
	b.failed("evil.example", now)
	cases := []struct {
		name   string
		server string
		at     time.Time
		want   bool
	}{
		{"unknown server", "good.example", now, false},
		{"just failed", "evil.example", now, true},
		{"within the pause", "evil.example", now.Add(failedServerPause - time.Second), true},
		{"after the pause", "evil.example", now.Add(failedServerPause), false},
		{"forgotten once expired", "evil.example", now, false},
	}
	for _, tc := range cases {
		if got := b.skip(tc.server, tc.at); got != tc.want {
			t.Errorf("%s: skip(%s) = %v, want %v", tc.name, tc.server, got, tc.want)
		}
	}

	var full serverBackoff
	full.failed("first.example", now)
	full.failed("kept.example", now)
	for i := range failedServerEntries - 2 {
		full.failed(fmt.Sprintf("s%d.example", i), now)
	}
	full.failed("kept.example", now) // failed again: the most recent
	full.failed("last.example", now)
	if n := full.order.Len(); n != failedServerEntries {
		t.Errorf("%d servers remembered, want %d", n, failedServerEntries)
	}
	if full.skip("first.example", now) {
		t.Error("the least recently failed server was not forgotten")
	}
	for _, server := range []string{"kept.example", "last.example", "s0.example"} {
		if !full.skip(server, now) {
			t.Errorf("%s was forgotten", server)
		}
	}
}
