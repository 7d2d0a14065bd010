package astest

import (
	"context"
	"testing"
	"time"
)

// Within returns a context that ends after d or when the test ends, whichever comes first. Tests
// pass it to the bounded waits of a clock.Fake (BlockUntil, BlockUntilInterval), which then
// give up with an error instead of hanging.
func Within(t testing.TB, d time.Duration) context.Context {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), d)
	t.Cleanup(cancel)
	return ctx
}
