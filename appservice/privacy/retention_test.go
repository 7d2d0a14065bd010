package privacy

import (
	"strings"
	"testing"
	"time"
)

func TestCheckRetention(t *testing.T) {
	tests := []struct {
		name    string
		table   UserTable
		wantErr string
	}{
		{name: "class with time column", table: UserTable{Table: "x", RetentionClass: RetentionNetwork, TimeColumn: "at"}},
		{name: "fixed with time column", table: UserTable{Table: "x", Retention: time.Hour, TimeColumn: "at"}},
		{name: "none", table: UserTable{Table: "x"}},
		{name: "class without time column", table: UserTable{Table: "x", RetentionClass: RetentionActivity}, wantErr: "needs a TimeColumn"},
		{name: "fixed without time column", table: UserTable{Table: "x", Retention: time.Hour}, wantErr: "needs a TimeColumn"},
		{name: "unknown class", table: UserTable{Table: "x", RetentionClass: "forever", TimeColumn: "at"}, wantErr: `unknown retention class "forever"`},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			err := CheckRetention(map[string][]UserTable{"m": {tt.table}})
			if tt.wantErr == "" && err != nil || tt.wantErr != "" && (err == nil || !strings.Contains(err.Error(), tt.wantErr)) {
				t.Errorf("CheckRetention = %v, want %q", err, tt.wantErr)
			}
		})
	}
}
