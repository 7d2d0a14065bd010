package astest

import (
	"sync"
	"testing"

	"github.com/rs/zerolog"
)

// LogWriter returns a log writer for t, as [zerolog.NewTestWriter] does, that stops writing to t
// once t's cleanups have run: later lines are dropped. A goroutine that outlives the test (one a
// library starts and does not wait for, such as mautrix's olm unwedging) then cannot log into a
// finished test, which the testing package reports as a data race or a panic.
//
// Call it before the code under test registers its own cleanups (the service's stop, say):
// cleanups run last-registered first, so the lines logged while the service stops still reach
// t.
func LogWriter(t testing.TB) zerolog.LevelWriter {
	w := &testLogWriter{w: zerolog.NewTestWriter(t)}
	t.Cleanup(func() {
		w.mu.Lock()
		w.done = true
		w.mu.Unlock()
	})
	return w
}

type testLogWriter struct {
	mu   sync.Mutex
	done bool
	w    zerolog.TestWriter
}

func (w *testLogWriter) Write(p []byte) (int, error) {
	w.mu.Lock()
	defer w.mu.Unlock()
	if w.done {
		return len(p), nil
	}
	return w.w.Write(p)
}

func (w *testLogWriter) WriteLevel(_ zerolog.Level, p []byte) (int, error) {
	return w.Write(p)
}
