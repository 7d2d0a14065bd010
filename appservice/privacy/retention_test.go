package privacy

import (
	"strings"
	"testing"
	"time"

	"go.mau.fi/util/dbutil"
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
		{name: "sessions class with SQL timestamp", table: UserTable{Table: "x", RetentionClass: RetentionSessions, TimeColumn: "at", TimeKind: TimeSQLTimestamp}},
		{name: "unknown time kind", table: UserTable{Table: "x", Retention: time.Hour, TimeColumn: "at", TimeKind: 7}, wantErr: "unknown time kind 7"},
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

func TestOlderThan(t *testing.T) {
	cutoff := time.Date(2026, 3, 1, 12, 30, 0, 0, time.FixedZone("east", 5*3600))
	tests := []struct {
		name     string
		dialect  dbutil.Dialect
		kind     TimeKind
		wantCond string
		wantArg  any
	}{
		{name: "millis", dialect: dbutil.SQLite, kind: TimeUnixMillis, wantCond: `"at" < $1`, wantArg: cutoff.UnixMilli()},
		{name: "sqlite timestamp", dialect: dbutil.SQLite, kind: TimeSQLTimestamp, wantCond: `julianday("at") < julianday($1)`, wantArg: "2026-03-01 07:30:00.000Z"},
		{name: "postgres timestamp", dialect: dbutil.Postgres, kind: TimeSQLTimestamp, wantCond: `"at" < CAST($1 AS timestamp)`, wantArg: "2026-03-01 07:30:00"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			cond, arg := OlderThan(tt.dialect, "at", tt.kind, cutoff)
			if cond != tt.wantCond || arg != tt.wantArg {
				t.Errorf("OlderThan = %q, %v; want %q, %v", cond, arg, tt.wantCond, tt.wantArg)
			}
		})
	}
}
