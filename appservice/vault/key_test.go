package vault

import (
	"bytes"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

func TestParseKeys(t *testing.T) {
	k1, k2 := mustKey(t), mustKey(t)
	line := func(k Key) string { return strings.TrimSpace(strings.Split(string(FormatKeys(k)), "\n")[3]) }
	secretB64 := base64.StdEncoding.EncodeToString(k1.material[:])
	tests := []struct {
		name    string
		in      string
		wantIDs []string
		wantErr string
	}{
		{name: "one key", in: line(k1), wantIDs: []string{k1.id}},
		{name: "generated file", in: string(FormatKeys(k1, k2)), wantIDs: []string{k1.id, k2.id}},
		{name: "semicolons", in: line(k2) + ";" + line(k1) + ";", wantIDs: []string{k2.id, k1.id}},
		{name: "comments and blanks", in: "# c\n\n  " + line(k1) + "  \n# x\n", wantIDs: []string{k1.id}},
		{name: "empty", in: "", wantErr: "holds no key"},
		{name: "only comments", in: "# nothing\n", wantErr: "holds no key"},
		{name: "wrong prefix", in: "custodian-kek v2 abc " + secretB64, wantErr: `line 1: not a key`},
		{name: "missing key", in: "custodian-kek v1 abc", wantErr: `line 1: not a key`},
		{name: "extra field", in: line(k1) + " extra", wantErr: `line 1: not a key`},
		{name: "bad ID", in: "custodian-kek v1 a/b " + secretB64, wantErr: "key ID must be"},
		{name: "not base64", in: "custodian-kek v1 abc " + secretB64[:20] + "!!", wantErr: "key abc is not base64 of 32 bytes"},
		{name: "short key", in: "custodian-kek v1 abc " + base64.StdEncoding.EncodeToString(k1.material[:31]), wantErr: "key abc is not base64 of 32 bytes"},
		{name: "duplicate ID", in: line(k1) + "\n" + line(k1), wantErr: "line 2: key ID " + k1.id + " appears twice"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			keys, err := ParseKeys([]byte(tt.in))
			if tt.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tt.wantErr) {
					t.Fatalf("ParseKeys() error = %v, want it to contain %q", err, tt.wantErr)
				}
				if strings.Contains(err.Error(), secretB64[:20]) {
					t.Errorf("ParseKeys() error %q contains key material", err)
				}
				return
			}
			if err != nil {
				t.Fatalf("ParseKeys() = %v", err)
			}
			var ids []string
			for _, k := range keys {
				ids = append(ids, k.ID())
			}
			if fmt.Sprint(ids) != fmt.Sprint(tt.wantIDs) {
				t.Errorf("ParseKeys() IDs = %v, want %v", ids, tt.wantIDs)
			}
			for _, k := range keys {
				switch k.ID() {
				case k1.id:
					if k.material != k1.material {
						t.Errorf("key %s material differs after the round trip", k.ID())
					}
				case k2.id:
					if k.material != k2.material {
						t.Errorf("key %s material differs after the round trip", k.ID())
					}
				}
			}
		})
	}
}

func TestKeyNeverPrintsMaterial(t *testing.T) {
	k := mustKey(t)
	raw := string(k.material[:])
	b64 := base64.StdEncoding.EncodeToString(k.material[:])
	jsonOut, _ := json.Marshal(map[string]any{"k": k, "p": &k})
	outs := []string{
		fmt.Sprint(k), fmt.Sprintf("%v %+v %#v %s %q %x %X %d", k, k, k, k, k, k, k, k),
		fmt.Sprintf("%v", &k), fmt.Sprintf("%+v", []Key{k}), string(jsonOut), k.String(),
	}
	for _, out := range outs {
		if strings.Contains(out, raw) || strings.Contains(out, b64) || strings.Contains(out, fmt.Sprintf("%x", k.material[:4])) {
			t.Errorf("formatted key shows its material: %s", out)
		}
		if !strings.Contains(out, k.ID()) {
			t.Errorf("formatted key %q does not name its ID", out)
		}
	}
}

func TestWriteNewKeyFile(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, "custodian.key")
	k := mustKey(t)
	if err := WriteNewKeyFile(path, k); err != nil {
		t.Fatal(err)
	}
	st, err := os.Stat(path)
	if err != nil {
		t.Fatal(err)
	}
	if mode := st.Mode().Perm(); mode != 0o600 {
		t.Errorf("key file mode = %o, want 600", mode)
	}
	keys, err := FileKeys(path).LoadKeys()
	if err != nil || len(keys) != 1 || keys[0].ID() != k.ID() || keys[0].material != k.material {
		t.Fatalf("LoadKeys() = %v, %v; want the written key", keys, err)
	}
	before, _ := os.ReadFile(path)
	if err = WriteNewKeyFile(path, mustKey(t)); !errors.Is(err, ErrKeyFileExists) {
		t.Fatalf("WriteNewKeyFile(existing) = %v, want ErrKeyFileExists", err)
	}
	if after, _ := os.ReadFile(path); !bytes.Equal(before, after) {
		t.Error("refusing to overwrite changed the file anyway")
	}
	if entries, _ := os.ReadDir(dir); len(entries) != 1 {
		t.Errorf("directory holds %d entries, want only the key file (no temporary files left)", len(entries))
	}
	if err = WriteNewKeyFile(filepath.Join(dir, "missing", "k.key"), k); err == nil {
		t.Error("WriteNewKeyFile(into a missing directory) succeeded")
	}
}

func TestReplaceKeyFile(t *testing.T) {
	path := filepath.Join(t.TempDir(), "custodian.key")
	k1, k2 := mustKey(t), mustKey(t)
	if err := os.WriteFile(path, FormatKeys(k1), 0o644); err != nil {
		t.Fatal(err)
	}
	if err := ReplaceKeyFile(path, k2, k1); err != nil {
		t.Fatal(err)
	}
	keys, err := FileKeys(path).LoadKeys()
	if err != nil || len(keys) != 2 || keys[0].ID() != k2.ID() || keys[1].ID() != k1.ID() {
		t.Fatalf("LoadKeys() = %v, %v; want [k2 k1]", keys, err)
	}
	if st, _ := os.Stat(path); st.Mode().Perm() != 0o600 {
		t.Errorf("replaced key file mode = %o, want 600", st.Mode().Perm())
	}
}

func TestKeySources(t *testing.T) {
	k1, k2 := mustKey(t), mustKey(t)
	dir := t.TempDir()
	good := filepath.Join(dir, "good.key")
	if err := WriteNewKeyFile(good, k1); err != nil {
		t.Fatal(err)
	}
	bad := filepath.Join(dir, "bad.key")
	secret := base64.StdEncoding.EncodeToString(k1.material[:])
	if err := os.WriteFile(bad, []byte("custodian-kek v9 x "+secret+"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	envValue := strings.TrimSpace(strings.Split(string(FormatKeys(k2)), "\n")[3]) + ";" + strings.TrimSpace(strings.Split(string(FormatKeys(k1)), "\n")[3])
	t.Setenv("CUSTODIAN_TEST_KEYS", envValue)
	t.Setenv("CUSTODIAN_TEST_EMPTY", "")
	tests := []struct {
		name    string
		src     KeySource
		wantIDs string
		wantErr string
	}{
		{"file", FileKeys(good), fmt.Sprint([]string{k1.ID()}), ""},
		{"missing file", FileKeys(filepath.Join(dir, "nope.key")), "", "no such file"},
		{"malformed file", FileKeys(bad), "", "key file " + bad + ": line 1: not a key"},
		{"env", EnvKeys("CUSTODIAN_TEST_KEYS"), fmt.Sprint([]string{k2.ID(), k1.ID()}), ""},
		{"unset env", EnvKeys("CUSTODIAN_TEST_UNSET_VARIABLE"), "", "is not set"},
		{"empty env", EnvKeys("CUSTODIAN_TEST_EMPTY"), "", "is not set"},
		{"static", StaticKeys{k1}, fmt.Sprint([]string{k1.ID()}), ""},
		{"no static keys", StaticKeys{}, "", "no keys"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			keys, err := tt.src.LoadKeys()
			if tt.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tt.wantErr) {
					t.Fatalf("LoadKeys() = %v, want an error containing %q", err, tt.wantErr)
				}
				if strings.Contains(err.Error(), secret[:16]) {
					t.Errorf("error %q contains key material", err)
				}
				return
			}
			var ids []string
			for _, k := range keys {
				ids = append(ids, k.ID())
			}
			if err != nil || fmt.Sprint(ids) != tt.wantIDs {
				t.Fatalf("LoadKeys() = %v, %v; want %s", ids, err, tt.wantIDs)
			}
			if strings.Contains(tt.src.String(), secret[:16]) {
				t.Errorf("String() = %q contains key material", tt.src.String())
			}
		})
	}
}
