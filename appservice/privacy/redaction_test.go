package privacy

import (
	"testing"

	"maunium.net/go/mautrix/event"
	"maunium.net/go/mautrix/id"
)

func TestRedactedEventID(t *testing.T) {
	tests := []struct {
		name string
		evt  *event.Event
		want id.EventID
	}{
		{name: "room v11 content", evt: &event.Event{Content: event.Content{Parsed: &event.RedactionEventContent{Redacts: "$a"}}}, want: "$a"},
		{name: "top level before v11", evt: &event.Event{Redacts: "$b"}, want: "$b"},
		{name: "content wins over top level", evt: &event.Event{Redacts: "$old", Content: event.Content{Parsed: &event.RedactionEventContent{Redacts: "$c"}}}, want: "$c"},
		{name: "unparsed content", evt: &event.Event{Content: event.Content{Raw: map[string]any{"redacts": "$d"}}}, want: "$d"},
		{name: "none", evt: &event.Event{}, want: ""},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if got := RedactedEventID(tt.evt); got != tt.want {
				t.Errorf("RedactedEventID() = %q, want %q", got, tt.want)
			}
		})
	}
}
