//go:build e2e

package e2e_test

import (
	"testing"

	"github.com/custodian-matrix/custodian/e2e"
)

func TestMain(m *testing.M) { e2e.Main(m) }
