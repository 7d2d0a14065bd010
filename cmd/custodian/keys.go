package main

import (
	"fmt"
	"io"
)

// runKeys is "custodian keys …": master key management. Being written with the vault.
func runKeys(args []string, stdout, stderr io.Writer) int {
	fmt.Fprintln(stderr, "custodian keys: not available in this build")
	return exitConfig
}
