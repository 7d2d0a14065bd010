package privacy

import (
	"strings"
	"testing"
)

func TestReceiptMarkdown(t *testing.T) {
	tests := []struct {
		name    string
		receipt *EraseReceipt
		leaving bool
		want    []string
	}{
		{
			name:    "everything",
			receipt: &EraseReceipt{JobID: "er_1", Erased: map[string]map[string]int64{"core": {"users": 1, "as_activity": 2}, "hooks": {"hooks_hook": 1}}},
			leaving: true,
			want:    []string{"erased everything", "core: 3 entries", "hooks: 1 entry", "`er_1`", "leaving this chat"},
		},
		{
			name:    "one bridge with a remote failure",
			receipt: &EraseReceipt{JobID: "er_2", Modules: []string{"hooks"}, RemoteFailures: []string{"hooks"}, Erased: map[string]map[string]int64{}},
			want:    []string{"what hooks held", "nothing to erase", "remote side failed"},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got := receiptMarkdown(tt.receipt, tt.leaving)
			for _, want := range tt.want {
				if !strings.Contains(got, want) {
					t.Errorf("receiptMarkdown() = %q, want it to contain %q", got, want)
				}
			}
			if !tt.leaving && strings.Contains(got, "leaving") {
				t.Errorf("receiptMarkdown() = %q, says it leaves", got)
			}
		})
	}
}

func TestJSONStringBody(t *testing.T) {
	tests := []struct{ in, want string }{
		{"@alice:example.org", "@alice:example.org"},
		{`@we"ird\:x`, `@we\"ird\\:x`},
		{"@a<b>&:x", "@a<b>&:x"},
	}
	for _, tt := range tests {
		if got := jsonStringBody(tt.in); got != tt.want {
			t.Errorf("jsonStringBody(%q) = %q, want %q", tt.in, got, tt.want)
		}
	}
}
