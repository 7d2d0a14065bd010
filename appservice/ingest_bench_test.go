package appservice

import (
	"bytes"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"path/filepath"
	"slices"
	"testing"
	"time"

	"go.mau.fi/util/dbutil"
	mxas "maunium.net/go/mautrix/appservice"

	"github.com/custodian-matrix/custodian/appservice/astest"
	"github.com/custodian-matrix/custodian/appservice/vault"
)

// BenchmarkIngest measures what the homeserver sees: transactions of 100 events sent one at a
// time (as Synapse does), each acknowledged only once durably committed. It reports events per
// second and the p50/p99 acknowledgement latency. mautrix's own in-memory handler, which
// acknowledges before storing anything, is measured beside it as a reference line.
//
//	go test -run '^$' -bench BenchmarkIngest -benchtime 2000x ./appservice/
//
// The sealed=yes variants run with the vault on, so every event's content is sealed (AES-256-GCM
// under the inbox key) before it is stored; sealed=no stores it as it came (vault off).
func BenchmarkIngest(b *testing.B) {
	for _, sealed := range []bool{true, false} {
		suffix := map[bool]string{true: "/sealed=yes", false: "/sealed=no"}[sealed]
		b.Run("backend=sqlite-wal-normal"+suffix, func(b *testing.B) {
			benchmarkCustodianIngest(b, openBenchSQLite(b, "sqlite3-fk-wal"), sealed)
		})
		b.Run("backend=sqlite-wal-fullsync"+suffix, func(b *testing.B) {
			benchmarkCustodianIngest(b, openBenchSQLite(b, "sqlite3-fk-wal-fullsync"), sealed)
		})
		if slices.Contains(astest.Dialects(b), astest.Postgres) {
			b.Run("backend=postgres"+suffix, func(b *testing.B) {
				benchmarkCustodianIngest(b, astest.TestDB(b, astest.Postgres), sealed)
			})
		}
	}
	b.Run("backend=mautrix-memory-reference", func(b *testing.B) {
		as := mxas.Create()
		as.Registration = testRegistration()
		go func() {
			for range as.Events {
			}
		}()
		srv := httptest.NewServer(as.Router)
		defer srv.Close()
		runIngestBenchmark(b, srv.URL)
	})
}

func openBenchSQLite(b *testing.B, driver string) *dbutil.Database {
	db, err := dbutil.NewWithDialect("file:"+filepath.Join(b.TempDir(), "bench.db")+"?_txlock=immediate", driver)
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { _ = db.Close() })
	return db
}

func benchmarkCustodianIngest(b *testing.B, db *dbutil.Database, sealed bool) {
	cfg := testConfig(deadHomeserver(b).URL)
	cfg.AppService.MaxBacklog = 100000
	if sealed {
		keyFile := filepath.Join(b.TempDir(), "custodian.key")
		k, err := vault.GenerateKey()
		if err != nil {
			b.Fatal(err)
		}
		if err = vault.WriteNewKeyFile(keyFile, k); err != nil {
			b.Fatal(err)
		}
		cfg.Vault = VaultConfig{KeyFile: &keyFile}
	}
	_, base := startTestService(b, db, cfg)
	runIngestBenchmark(b, base)
}

const benchEventsPerTxn = 100

func benchTransaction(n int) []byte {
	events := make([]map[string]any, benchEventsPerTxn)
	for i := range events {
		events[i] = messageEvent(
			fmt.Sprintf("$bench-%d-%d", n, i),
			fmt.Sprintf("!room%d:example.org", i%10),
			"@alice:example.org",
			"A typical chat message of a few dozen characters, nothing special.",
		)
	}
	data, _ := json.Marshal(map[string]any{"events": events})
	return data
}

func runIngestBenchmark(b *testing.B, base string) {
	client := &http.Client{Transport: &http.Transport{MaxIdleConnsPerHost: 1}}
	bodies := make([][]byte, b.N)
	for n := range bodies {
		bodies[n] = benchTransaction(n)
	}
	latencies := make([]time.Duration, 0, b.N)
	b.ResetTimer()
	start := time.Now()
	for n := 0; n < b.N; n++ {
		req, _ := http.NewRequest(http.MethodPut, fmt.Sprintf("%s/_matrix/app/v1/transactions/%d", base, n), bytes.NewReader(bodies[n]))
		req.Header.Set("Authorization", "Bearer "+testHSToken)
		sent := time.Now()
		resp, err := client.Do(req)
		if err != nil {
			b.Fatal(err)
		}
		_, _ = io.Copy(io.Discard, resp.Body)
		_ = resp.Body.Close()
		if resp.StatusCode != http.StatusOK {
			b.Fatalf("transaction %d: status %d", n, resp.StatusCode)
		}
		latencies = append(latencies, time.Since(sent))
	}
	elapsed := time.Since(start)
	b.StopTimer()
	slices.Sort(latencies)
	b.ReportMetric(float64(b.N*benchEventsPerTxn)/elapsed.Seconds(), "events/s")
	b.ReportMetric(float64(latencies[len(latencies)*50/100].Microseconds())/1000, "p50-ms")
	b.ReportMetric(float64(latencies[min(len(latencies)-1, len(latencies)*99/100)].Microseconds())/1000, "p99-ms")
}
