package main

import (
	"bufio"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"strings"
	"text/tabwriter"

	"github.com/custodian-matrix/custodian/bridges/irc"
)

// portalsAPI is where the IRC bridge's portal endpoints are, below the admin API's prefix.
const portalsAPI = "/bridges/" + irc.BridgeID + "/portals"

// runPortals is "custodian portals list [-c config.yaml] [--json]": it lists the IRC bridge's
// portals through the running service's admin API.
func runPortals(args []string, stdout, stderr io.Writer) int {
	flags := flag.NewFlagSet("custodian portals", flag.ContinueOnError)
	flags.SetOutput(stderr)
	configPath := flags.String("c", "config.yaml", "the configuration file (for the admin API's address and token)")
	asJSON := flags.Bool("json", false, "print the admin API's JSON answer")
	flags.Usage = func() {
		fmt.Fprintf(stderr, "Usage: custodian portals list [-c config.yaml] [--json]\n\n"+
			"Lists the IRC bridge's portals (rooms bridged to channels) of the running Custodian, through its admin API.\n\n")
		flags.PrintDefaults()
	}
	positional, code, ok := parsePositional(flags, args)
	if !ok {
		return code
	}
	if len(positional) != 1 || positional[0] != "list" {
		fmt.Fprintf(stderr, "custodian portals: want the subcommand list\n")
		flags.Usage()
		return exitConfig
	}
	client, err := newAdminClient(*configPath)
	if err != nil {
		fmt.Fprintf(stderr, "custodian portals: %v\n", err)
		return exitConfig
	}
	data, err := client.do(http.MethodGet, portalsAPI, nil)
	if err != nil {
		fmt.Fprintf(stderr, "custodian portals: %v\n", err)
		return exitRuntime
	}
	var list irc.AdminPortals
	if err = json.Unmarshal(data, &list); err != nil {
		fmt.Fprintf(stderr, "custodian portals: the admin API answered with something that is not a portal list\n")
		return exitRuntime
	}
	if *asJSON {
		out, _ := json.MarshalIndent(&list, "", "  ")
		fmt.Fprintf(stdout, "%s\n", out)
		return exitOK
	}
	if len(list.Portals) == 0 {
		fmt.Fprintln(stdout, "No portals.")
		return exitOK
	}
	tw := tabwriter.NewWriter(stdout, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "NETWORK\tCHANNEL\tROOM\tALIAS\tLINKED BY\tSINCE")
	for _, p := range list.Portals {
		linkedBy := string(p.LinkedBy)
		if linkedBy == "" {
			linkedBy = "-"
		}
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\t%s\n", p.Network, p.Channel, p.RoomID, p.Alias, linkedBy, p.CreatedAt.Format("2006-01-02"))
	}
	_ = tw.Flush()
	return exitOK
}

// runPortal is "custodian portal unlink|reset <room ID or alias> [-c config.yaml] [--yes]": after
// confirmation (unless --yes), it unlinks a portal, or gives its channel a new portal room,
// through the running service's admin API.
func runPortal(args []string, stdout, stderr io.Writer) int {
	flags := flag.NewFlagSet("custodian portal", flag.ContinueOnError)
	flags.SetOutput(stderr)
	configPath := flags.String("c", "config.yaml", "the configuration file (for the admin API's address and token)")
	yes := flags.Bool("yes", false, "do not ask for confirmation")
	flags.Usage = func() {
		fmt.Fprintf(stderr, "Usage: custodian portal unlink|reset <!room:server | #alias:server> [-c config.yaml] [--yes]\n\n"+
			"unlink: the room is no longer bridged; the bridge leaves the channel and frees the channel's alias.\n"+
			"reset:  the channel gets a new portal room with its alias; the old room points to it and the bridge leaves it.\n\n")
		flags.PrintDefaults()
	}
	positional, code, ok := parsePositional(flags, args)
	if !ok {
		return code
	}
	if len(positional) != 2 || (positional[0] != "unlink" && positional[0] != "reset") {
		fmt.Fprintf(stderr, "custodian portal: want unlink or reset and one room ID or alias\n")
		flags.Usage()
		return exitConfig
	}
	op, ref := positional[0], positional[1]
	if !strings.HasPrefix(ref, "!") && !strings.HasPrefix(ref, "#") || !strings.Contains(ref, ":") {
		fmt.Fprintf(stderr, "custodian portal: %q is not a room ID (!room:server) or alias (#alias:server)\n", ref)
		return exitConfig
	}
	client, err := newAdminClient(*configPath)
	if err != nil {
		fmt.Fprintf(stderr, "custodian portal: %v\n", err)
		return exitConfig
	}
	if !*yes {
		what := "This unlinks " + ref + " from its IRC channel: the room stays, but is no longer bridged."
		if op == "reset" {
			what = "This gives the IRC channel of " + ref + " a new portal room; the bridge leaves the old one."
		}
		fmt.Fprintf(stderr, "%s Type %s to confirm: ", what, op)
		line, _ := bufio.NewReader(stdin).ReadString('\n')
		if strings.TrimSpace(line) != op {
			fmt.Fprintf(stderr, "\ncustodian portal: not confirmed; nothing was changed\n")
			return exitConfig
		}
	}
	data, err := client.do(http.MethodPost, portalsAPI+"/"+url.PathEscape(ref)+"/"+op, []byte("{}"))
	if err != nil {
		fmt.Fprintf(stderr, "custodian portal: %v\n", err)
		return exitRuntime
	}
	var change irc.AdminPortalChange
	if err = json.Unmarshal(data, &change); err != nil || change.Old == nil {
		fmt.Fprintf(stderr, "custodian portal: the admin API answered with something that is not a portal change\n")
		return exitRuntime
	}
	switch {
	case change.New != nil:
		fmt.Fprintf(stdout, "Reset the portal of %s on %s: %s replaces %s (alias %s).\n",
			change.Old.Channel, change.Old.Network, change.New.RoomID, change.Old.RoomID, change.New.Alias)
	default:
		fmt.Fprintf(stdout, "Unlinked %s from %s on %s.\n", change.Old.RoomID, change.Old.Channel, change.Old.Network)
	}
	return exitOK
}

// parsePositional parses flags and positional arguments in any order. On failure it has
// printed why and returns the exit code.
func parsePositional(flags *flag.FlagSet, args []string) ([]string, int, bool) {
	var positional []string
	for {
		if err := flags.Parse(args); err != nil {
			if errors.Is(err, flag.ErrHelp) {
				return nil, exitOK, false
			}
			return nil, exitConfig, false
		}
		if flags.NArg() == 0 {
			return positional, exitOK, true
		}
		positional = append(positional, flags.Arg(0))
		args = flags.Args()[1:]
	}
}
