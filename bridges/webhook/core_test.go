package webhook_test

import (
	"context"
	"errors"
	"fmt"
	"net"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/rs/zerolog"
	"gopkg.in/yaml.v3"

	"github.com/custodian-matrix/custodian/appservice"
	"github.com/custodian-matrix/custodian/appservice/astest"
	"github.com/custodian-matrix/custodian/appservice/vault"
	"github.com/custodian-matrix/custodian/bridges/webhook"
)

// TestCoreStartsWithBridge starts the real core with the webhook bridge on both dialects: the
// core decodes and validates the bridge's section, runs its migrations, checks its personal-data
// inventory against the schema (refusing to start on any mismatch), and starts it.
func TestCoreStartsWithBridge(t *testing.T) {
	for _, dialect := range astest.Dialects(t) {
		t.Run(dialect, func(t *testing.T) {
			hs := astest.NewFakeHomeserver(t, "localhost", "")
			br := webhook.New()
			bridges := []appservice.Bridge{br}

			cfg := appservice.DefaultConfig()
			cfg.Homeserver.Address = hs.URL()
			cfg.Homeserver.Domain = "localhost"
			cfg.AppService.Port = freePort(t)
			cfg.AppService.Address = fmt.Sprintf("http://127.0.0.1:%d", cfg.AppService.Port)
			cfg.AppService.ASToken = vault.NewSecret("as-token")
			cfg.AppService.HSToken = vault.NewSecret("hs-token")
			cfg.Metrics.Listen = nil
			cfg.Vault.KeyFile, cfg.Vault.KeyEnv = nil, nil
			switch dialect {
			case astest.SQLite:
				cfg.Database.Type = appservice.DatabaseSQLite
				cfg.Database.URI = "file:" + filepath.Join(t.TempDir(), "custodian.db") + "?_txlock=immediate"
			case astest.Postgres:
				cfg.Database.Type = appservice.DatabasePostgres
				cfg.Database.URI = astest.PostgresURI(t)
			}
			var section yaml.Node
			if err := yaml.Unmarshal([]byte("listen: 127.0.0.1:0\npublic_url: https://hooks.example.org\nallow_private_targets: true\n"), &section); err != nil {
				t.Fatal(err)
			}
			cfg.Bridges = map[string]yaml.Node{"webhook": *section.Content[0]}
			if err := cfg.DecodeBridges(bridges); err != nil {
				t.Fatalf("DecodeBridges = %v", err)
			}
			reg := appservice.GenerateRegistration(cfg, bridges)
			reg.AppToken, reg.ServerToken = "as-token", "hs-token"

			log := zerolog.New(astest.LogWriter(t)).Level(zerolog.InfoLevel)
			svc, err := appservice.New(cfg, reg, bridges, log)
			if err != nil {
				t.Fatal(err)
			}
			ctx, cancel := context.WithCancel(context.Background())
			done := make(chan error, 1)
			go func() { done <- svc.Run(ctx) }()
			defer func() {
				cancel()
				select {
				case err := <-done:
					if err != nil {
						t.Errorf("Run = %v", err)
					}
				case <-time.After(30 * time.Second):
					t.Error("Run did not return after its context was cancelled")
				}
			}()
			deadline := time.After(30 * time.Second)
			for br.Addr() == nil {
				select {
				case err := <-done:
					done <- nil
					if err == nil {
						err = errors.New("stopped")
					}
					t.Fatalf("the core did not start the bridge: %v", strings.ReplaceAll(err.Error(), "\n", "; "))
				case <-deadline:
					t.Fatal("timed out waiting for the core to start the bridge")
				case <-time.After(10 * time.Millisecond):
				}
			}
		})
	}
}

func freePort(t *testing.T) uint16 {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	return uint16(ln.Addr().(*net.TCPAddr).Port)
}
