package main

import (
	"fmt"
	"io"
)

// runExport is "custodian export @user:server". Being written with the privacy operations.
func runExport(args []string, stdout, stderr io.Writer) int {
	fmt.Fprintln(stderr, "custodian export: not available in this build")
	return exitConfig
}

// runForget is "custodian forget @user:server". Being written with the privacy operations.
func runForget(args []string, stdout, stderr io.Writer) int {
	fmt.Fprintln(stderr, "custodian forget: not available in this build")
	return exitConfig
}
