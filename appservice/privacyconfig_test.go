package appservice

import (
	"strings"
	"testing"
	"time"
)

func TestPrivacyConfigValidate(t *testing.T) {
	str := func(s string) *string { return &s }
	valid := func() PrivacyConfig {
		return PrivacyConfig{
			ActivityRetention: 336 * time.Hour, NetworkRetention: 1440 * time.Hour, SweepInterval: 10 * time.Minute,
			ExportTTL:    time.Hour,
			Deactivation: DeactivationConfig{SweepInterval: 6 * time.Hour},
		}
	}
	tests := []struct {
		name   string
		modify func(pc *PrivacyConfig)
		want   []string // paths with problems
	}{
		{name: "defaults", modify: func(*PrivacyConfig) {}},
		{name: "admin token file", modify: func(pc *PrivacyConfig) { pc.Deactivation.AdminTokenFile = str("/etc/custodian/admin.token") }},
		{name: "admin ghost", modify: func(pc *PrivacyConfig) { pc.Deactivation.AdminLocalpart = str("webhook_admin") }},
		{name: "zero retention", modify: func(pc *PrivacyConfig) { pc.ActivityRetention = 0 }, want: []string{"privacy.activity_retention"}},
		{name: "sweep too often", modify: func(pc *PrivacyConfig) { pc.SweepInterval = time.Second }, want: []string{"privacy.sweep_interval"}},
		{name: "deactivation sweep too often", modify: func(pc *PrivacyConfig) { pc.Deactivation.SweepInterval = 0 }, want: []string{"privacy.deactivation.sweep_interval"}},
		{name: "export ttl too short", modify: func(pc *PrivacyConfig) { pc.ExportTTL = time.Second }, want: []string{"privacy.export_ttl"}},
		{name: "export ttl missing", modify: func(pc *PrivacyConfig) { pc.ExportTTL = 0 }, want: []string{"privacy.export_ttl"}},
		{name: "empty token path", modify: func(pc *PrivacyConfig) { pc.Deactivation.AdminTokenFile = str("") }, want: []string{"privacy.deactivation.admin_token_file"}},
		{name: "bad localpart", modify: func(pc *PrivacyConfig) { pc.Deactivation.AdminLocalpart = str("Not Valid") }, want: []string{"privacy.deactivation.admin_localpart"}},
		{name: "both", modify: func(pc *PrivacyConfig) {
			pc.Deactivation.AdminLocalpart = str("webhook_admin")
			pc.Deactivation.AdminTokenFile = str("/x")
		}, want: []string{"privacy.deactivation.admin_localpart"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			pc := valid()
			tt.modify(&pc)
			var got []string
			for _, problem := range pc.validate() {
				got = append(got, problem.Path)
			}
			if strings.Join(got, ",") != strings.Join(tt.want, ",") {
				t.Errorf("validate() problems at %v, want %v", got, tt.want)
			}
		})
	}
}

func TestAdminAPIConfigValidate(t *testing.T) {
	str := func(s string) *string { return &s }
	tests := []struct {
		name string
		cfg  AdminAPIConfig
		want []string
	}{
		{name: "off", cfg: AdminAPIConfig{}},
		{name: "on", cfg: AdminAPIConfig{Listen: str("127.0.0.1:29331"), TokenFile: str("admin.token")}},
		{name: "no token file", cfg: AdminAPIConfig{Listen: str("127.0.0.1:29331")}, want: []string{"admin_api.token_file"}},
		{name: "no port", cfg: AdminAPIConfig{Listen: str("127.0.0.1"), TokenFile: str("t")}, want: []string{"admin_api.listen"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var got []string
			for _, problem := range tt.cfg.validate() {
				got = append(got, problem.Path)
			}
			if strings.Join(got, ",") != strings.Join(tt.want, ",") {
				t.Errorf("validate() problems at %v, want %v", got, tt.want)
			}
		})
	}
}

func TestIsLoopbackListen(t *testing.T) {
	tests := []struct {
		addr string
		want bool
	}{
		{"127.0.0.1:1", true}, {"[::1]:1", true}, {"localhost:1", true},
		{"0.0.0.0:1", false}, {":1", false}, {"192.0.2.1:1", false}, {"nonsense", false},
	}
	for _, tt := range tests {
		if got := isLoopbackListen(tt.addr); got != tt.want {
			t.Errorf("isLoopbackListen(%q) = %v, want %v", tt.addr, got, tt.want)
		}
	}
}
