package vault

import (
	"bytes"
	"encoding/json"
	"encoding/xml"
	"fmt"
	"log/slog"
	"strings"
	"testing"

	"github.com/rs/zerolog"
	"gopkg.in/yaml.v3"
)

const plaintext = "hunter2-s3cr3t"

type holder struct {
	Name  string  `json:"name" yaml:"name" xml:"name"`
	Token Secret  `json:"token" yaml:"token" xml:"token"`
	Ptr   *Secret `json:"ptr" yaml:"ptr" xml:"ptr"`
}

func TestSecretNeverPrintsValue(t *testing.T) {
	s := NewSecret(plaintext)
	h := holder{Name: "x", Token: s, Ptr: &s}
	tests := []struct {
		name string
		out  func() (string, error)
	}{
		{"%v", func() (string, error) { return fmt.Sprintf("%v", s), nil }},
		{"%+v", func() (string, error) { return fmt.Sprintf("%+v", s), nil }},
		{"%#v", func() (string, error) { return fmt.Sprintf("%#v", s), nil }},
		{"%s", func() (string, error) { return fmt.Sprintf("%s", s), nil }},
		{"%q", func() (string, error) { return fmt.Sprintf("%q", s), nil }},
		{"%x", func() (string, error) { return fmt.Sprintf("%x", s), nil }},
		{"%X", func() (string, error) { return fmt.Sprintf("%X", s), nil }},
		{"%10.3s", func() (string, error) { return fmt.Sprintf("%10.3s", s), nil }},
		{"pointer %v", func() (string, error) { return fmt.Sprintf("%v", &s), nil }},
		{"pointer %s", func() (string, error) { return fmt.Sprintf("%s", &s), nil }},
		{"struct %v", func() (string, error) { return fmt.Sprintf("%v", h), nil }},
		{"struct %+v", func() (string, error) { return fmt.Sprintf("%+v", h), nil }},
		{"struct %#v", func() (string, error) { return fmt.Sprintf("%#v", h), nil }},
		{"Sprint", func() (string, error) { return fmt.Sprint(s, &s, h), nil }},
		{"Println", func() (string, error) { return fmt.Sprintln(s, &s, h), nil }},
		{"String", func() (string, error) { return s.String(), nil }},
		{"GoString", func() (string, error) { return s.GoString(), nil }},
		{"error wrapping", func() (string, error) { return fmt.Errorf("failed with %v", s).Error(), nil }},
		{"json", func() (string, error) { b, err := json.Marshal(s); return string(b), err }},
		{"json struct", func() (string, error) { b, err := json.Marshal(h); return string(b), err }},
		{"json map key", func() (string, error) { b, err := json.Marshal(map[Secret]int{s: 1}); return string(b), err }},
		{"yaml", func() (string, error) { b, err := yaml.Marshal(s); return string(b), err }},
		{"yaml struct", func() (string, error) { b, err := yaml.Marshal(h); return string(b), err }},
		{"xml", func() (string, error) { b, err := xml.Marshal(h); return string(b), err }},
		{"text", func() (string, error) { b, err := s.MarshalText(); return string(b), err }},
		{"zerolog Stringer", func() (string, error) { return zerologOut(func(e *zerolog.Event) { e.Stringer("k", s) }), nil }},
		{"zerolog Object", func() (string, error) { return zerologOut(func(e *zerolog.Event) { e.Object("k", s) }), nil }},
		{"zerolog Interface", func() (string, error) { return zerologOut(func(e *zerolog.Event) { e.Interface("k", h) }), nil }},
		{"zerolog Any", func() (string, error) { return zerologOut(func(e *zerolog.Event) { e.Any("k", s) }), nil }},
		{"slog", func() (string, error) {
			var buf bytes.Buffer
			slog.New(slog.NewTextHandler(&buf, nil)).Info("msg", "k", s, "h", h)
			return buf.String(), nil
		}},
		{"slog json", func() (string, error) {
			var buf bytes.Buffer
			slog.New(slog.NewJSONHandler(&buf, nil)).Info("msg", "k", s, "h", h)
			return buf.String(), nil
		}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := tt.out()
			if err != nil {
				t.Fatalf("error: %v", err)
			}
			if strings.Contains(got, plaintext) || strings.Contains(got, "hunter") {
				t.Errorf("output %q leaks the secret", got)
			}
			if !strings.Contains(got, Redacted) {
				t.Errorf("output %q does not contain %q", got, Redacted)
			}
		})
	}
}

func zerologOut(add func(e *zerolog.Event)) string {
	var buf bytes.Buffer
	log := zerolog.New(&buf)
	evt := log.Info()
	add(evt)
	evt.Msg("test")
	return buf.String()
}

func TestSecretFormatExact(t *testing.T) {
	s := NewSecret(plaintext)
	tests := []struct {
		format string
		want   string
	}{
		{"%v", "[redacted]"},
		{"%s", "[redacted]"},
		{"%q", `"[redacted]"`},
		{"%#v", "[redacted]"},
		{"%d", "[redacted]"},
	}
	for _, tt := range tests {
		if got := fmt.Sprintf(tt.format, s); got != tt.want {
			t.Errorf("Sprintf(%q, secret) = %q, want %q", tt.format, got, tt.want)
		}
	}
}

func TestSecretUnmarshal(t *testing.T) {
	tests := []struct {
		name    string
		yaml    string
		json    string
		want    string
		wantErr bool
	}{
		{name: "plain string", yaml: "token: abc", json: `{"token":"abc"}`, want: "abc"},
		{name: "quoted", yaml: `token: "a b#c"`, json: `{"token":"a b#c"}`, want: "a b#c"},
		{name: "number keeps text", yaml: "token: 0123", want: "0123"},
		{name: "null", yaml: "token: null", json: `{"token":null}`, want: ""},
		{name: "missing", yaml: "name: x", json: `{"name":"x"}`, want: ""},
		{name: "mapping", yaml: "token: {a: b}", json: `{"token":{"a":"b"}}`, wantErr: true},
		{name: "list", yaml: "token: [abc]", json: `{"token":["abc"]}`, wantErr: true},
	}
	for _, tt := range tests {
		t.Run(tt.name+"/yaml", func(t *testing.T) {
			var h holder
			err := yaml.Unmarshal([]byte(tt.yaml), &h)
			if (err != nil) != tt.wantErr {
				t.Fatalf("yaml.Unmarshal(%q) error = %v, wantErr %v", tt.yaml, err, tt.wantErr)
			}
			if err == nil && h.Token.Reveal() != tt.want {
				t.Errorf("yaml.Unmarshal(%q) token = %q, want %q", tt.yaml, h.Token.Reveal(), tt.want)
			}
			if err != nil && strings.Contains(err.Error(), "abc") {
				t.Errorf("error %q contains the value", err)
			}
		})
		if tt.json == "" {
			continue
		}
		t.Run(tt.name+"/json", func(t *testing.T) {
			var h holder
			err := json.Unmarshal([]byte(tt.json), &h)
			if (err != nil) != tt.wantErr {
				t.Fatalf("json.Unmarshal(%q) error = %v, wantErr %v", tt.json, err, tt.wantErr)
			}
			if err == nil && h.Token.Reveal() != tt.want {
				t.Errorf("json.Unmarshal(%q) token = %q, want %q", tt.json, h.Token.Reveal(), tt.want)
			}
			if err != nil && strings.Contains(err.Error(), "abc") {
				t.Errorf("error %q contains the value", err)
			}
		})
	}
}

func TestSecretIsZeroAndEqual(t *testing.T) {
	tests := []struct {
		name     string
		s        Secret
		other    string
		wantZero bool
		wantEq   bool
	}{
		{"zero", Secret{}, "", true, true},
		{"empty", NewSecret(""), "x", true, false},
		{"equal", NewSecret("abc"), "abc", false, true},
		{"prefix", NewSecret("abc"), "ab", false, false},
		{"different", NewSecret("abc"), "abd", false, false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if got := tt.s.IsZero(); got != tt.wantZero {
				t.Errorf("IsZero() = %v, want %v", got, tt.wantZero)
			}
			if got := tt.s.Equal(tt.other); got != tt.wantEq {
				t.Errorf("Equal(%q) = %v, want %v", tt.other, got, tt.wantEq)
			}
		})
	}
}

func TestSecretYAMLOmitEmpty(t *testing.T) {
	type opt struct {
		Token Secret `yaml:"token,omitempty"`
	}
	got, err := yaml.Marshal(opt{})
	if err != nil {
		t.Fatal(err)
	}
	if string(got) != "{}\n" {
		t.Errorf("yaml.Marshal(empty) = %q, want %q", got, "{}\n")
	}
}
