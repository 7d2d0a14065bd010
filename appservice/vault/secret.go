package vault

import (
	"crypto/subtle"
	"encoding/json"
	"fmt"
	"log/slog"
	"strings"

	"github.com/rs/zerolog"
	"gopkg.in/yaml.v3"
)

// Redacted is what every formatting and marshalling path of a [Secret] prints instead of the
// value.
const Redacted = "[redacted]"

// Secret holds a credential (a token, a password, a key) so that it cannot leak by accident:
// fmt (every verb, including %v, %+v, %#v, %s, %q and %x), JSON, YAML, text marshalling, slog and
// zerolog all print [Redacted]. Only [Secret.Reveal] returns the value; call it at the point of
// use and keep the result in a local variable.
//
// Secret reads a plain YAML or JSON string, so configuration files can hold secrets directly.
// The zero Secret is empty. Secrets are immutable and safe for concurrent use.
type Secret struct {
	value string
}

// NewSecret wraps value in a Secret.
func NewSecret(value string) Secret {
	return Secret{value: value}
}

// Reveal returns the secret value. It is the only way to read it; never log or format the result.
func (s Secret) Reveal() string {
	return s.value
}

// IsZero reports whether the secret is empty. yaml.v3 uses it for omitempty.
func (s Secret) IsZero() bool {
	return s.value == ""
}

// Equal reports whether the secret equals other, in time that does not depend on where they
// differ, so it is safe for comparing tokens presented by a client.
func (s Secret) Equal(other string) bool {
	return subtle.ConstantTimeCompare([]byte(s.value), []byte(other)) == 1
}

// String returns [Redacted].
func (s Secret) String() string {
	return Redacted
}

// GoString returns [Redacted], for %#v.
func (s Secret) GoString() string {
	return Redacted
}

// Format prints [Redacted] for every verb and flag, so no fmt path reaches the value.
func (s Secret) Format(f fmt.State, verb rune) {
	if verb == 'q' {
		_, _ = fmt.Fprintf(f, "%q", Redacted)
		return
	}
	_, _ = f.Write([]byte(Redacted))
}

// MarshalJSON returns the JSON string "[redacted]".
func (s Secret) MarshalJSON() ([]byte, error) {
	return []byte(`"` + Redacted + `"`), nil
}

// UnmarshalJSON reads a JSON string (or null, which leaves the secret empty).
func (s *Secret) UnmarshalJSON(data []byte) error {
	if string(data) == "null" {
		*s = Secret{}
		return nil
	}
	var str string
	if err := json.Unmarshal(data, &str); err != nil {
		return fmt.Errorf("failed to read secret: %w", err)
	}
	*s = Secret{value: str}
	return nil
}

// MarshalText returns [Redacted], for encoders that use encoding.TextMarshaler (XML, map keys).
func (s Secret) MarshalText() ([]byte, error) {
	return []byte(Redacted), nil
}

// MarshalYAML returns [Redacted]. Code that must write a real secret into a file (such as the
// configuration's tokens after generating a registration) edits the YAML node tree with the
// revealed value instead.
func (s Secret) MarshalYAML() (any, error) {
	return Redacted, nil
}

// UnmarshalYAML reads any YAML scalar as the secret's text exactly as written, so that a
// password such as 0123 keeps its leading zero; null leaves the secret empty. A mapping or a
// list is a *yaml.TypeError ("line N: cannot unmarshal !!map into vault.Secret"), which never
// includes the value.
func (s *Secret) UnmarshalYAML(node *yaml.Node) error {
	if node.Kind == yaml.AliasNode && node.Alias != nil {
		node = node.Alias
	}
	if node.Kind != yaml.ScalarNode {
		// The same form as yaml.v3's own type errors, so callers can treat them alike; the
		// value itself is never part of it.
		return &yaml.TypeError{Errors: []string{
			fmt.Sprintf("line %d: cannot unmarshal %s into vault.Secret", node.Line, shortTag(node)),
		}}
	}
	if node.Tag == "!!null" {
		*s = Secret{}
		return nil
	}
	*s = Secret{value: node.Value}
	return nil
}

// LogValue returns [Redacted] for log/slog.
func (s Secret) LogValue() slog.Value {
	return slog.StringValue(Redacted)
}

// MarshalZerologObject writes {"value":"[redacted]"}, for zerolog's Object. Prefer
// Stringer(key, secret), which writes "[redacted]" directly.
func (s Secret) MarshalZerologObject(e *zerolog.Event) {
	e.Str("value", Redacted)
}

func shortTag(node *yaml.Node) string {
	switch node.Kind {
	case yaml.MappingNode:
		return "!!map"
	case yaml.SequenceNode:
		return "!!seq"
	default:
		return "!!" + strings.TrimPrefix(node.ShortTag(), "!!")
	}
}

var (
	_ fmt.Formatter              = Secret{}
	_ fmt.Stringer               = Secret{}
	_ fmt.GoStringer             = Secret{}
	_ slog.LogValuer             = Secret{}
	_ zerolog.LogObjectMarshaler = Secret{}
	_ yaml.Marshaler             = Secret{}
	_ yaml.Unmarshaler           = (*Secret)(nil)
	_ yaml.IsZeroer              = Secret{}
)
