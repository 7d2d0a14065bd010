package astest

import "testing"

func TestIsCIValue(t *testing.T) {
	tests := []struct {
		value string
		want  bool
	}{
		{"", false},
		{"false", false},
		{"FALSE", false},
		{"False", false},
		{"0", false},
		{" ", false},
		{"true", true},
		{"TRUE", true},
		{"1", true},
		{"yes", true},
		{"woodpecker", true},
	}
	for _, tt := range tests {
		if got := isCIValue(tt.value); got != tt.want {
			t.Errorf("isCIValue(%q) = %v, want %v", tt.value, got, tt.want)
		}
	}
}

func TestDialectsRequirePostgresInCI(t *testing.T) {
	t.Setenv("POSTGRES_TEST_URI", "")
	for _, ci := range []string{"true", "1", "yes"} {
		t.Setenv("CI", ci)
		ft := &fatalRecorder{TB: t}
		func() {
			defer func() { _ = recover() }()
			Dialects(ft)
		}()
		if !ft.failed {
			t.Errorf("Dialects with CI=%q and no POSTGRES_TEST_URI did not fail the test", ci)
		}
	}
	t.Setenv("CI", "false")
	if got := Dialects(t); len(got) != 1 || got[0] != SQLite {
		t.Errorf("Dialects with CI=false = %v, want [sqlite]", got)
	}
}

// fatalRecorder is a testing.TB whose Fatal records the failure and stops the calling function
// with a panic, instead of failing the real test.
type fatalRecorder struct {
	testing.TB
	failed bool
}

func (fr *fatalRecorder) Helper() {}

func (fr *fatalRecorder) Fatal(args ...any) {
	fr.failed = true
	panic("fatal")
}
