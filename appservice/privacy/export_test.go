package privacy

import (
	"encoding/json"
	"testing"
	"time"
)

func TestExportValue(t *testing.T) {
	tests := []struct {
		name   string
		in     any
		dbType string
		isTime bool
		want   any
	}{
		{name: "nil", in: nil, want: nil},
		{name: "text bytes", in: []byte("hello"), dbType: "TEXT", want: "hello"},
		{name: "binary", in: []byte{0xff, 0x00}, dbType: "BYTEA", want: "/wA="},
		{name: "blob", in: []byte("x"), dbType: "BLOB", want: "eA=="},
		{name: "sqlite boolean", in: int64(1), dbType: "BOOLEAN", want: true},
		{name: "time", in: int64(1772366400000), isTime: true, want: time.UnixMilli(1772366400000).UTC()},
		{name: "postgres time as text", in: []byte("1772366400000"), dbType: "INT8", isTime: true, want: time.UnixMilli(1772366400000).UTC()},
		{name: "number", in: int64(42), want: int64(42)},
		{name: "json object", in: `{"a":1}`, dbType: "TEXT", want: json.RawMessage(`{"a":1}`)},
		{name: "not json", in: `{oops`, dbType: "TEXT", want: `{oops`},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got := exportValue(tt.in, tt.dbType, tt.isTime)
			gotJSON, _ := json.Marshal(got)
			wantJSON, _ := json.Marshal(tt.want)
			if string(gotJSON) != string(wantJSON) {
				t.Errorf("exportValue(%v, %q, %v) = %s, want %s", tt.in, tt.dbType, tt.isTime, gotJSON, wantJSON)
			}
		})
	}
}
