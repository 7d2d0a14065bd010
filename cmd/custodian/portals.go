package main

import (
	"encoding/json"
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
	cmd := newAdminCommand("custodian portals", "Usage: custodian portals list [-c config.yaml] [--json]\n\n"+
		"Lists the IRC bridge's portals (rooms bridged to channels) of the running Custodian, through its admin API.\n\n", stderr)
	asJSON := cmd.flags.Bool("json", false, "print the admin API's JSON answer")
	positional, code, ok := parsePositional(cmd.flags, args)
	if !ok {
		return code
	}
	if len(positional) != 1 || positional[0] != "list" {
		cmd.failf(exitConfig, "want the subcommand list")
		cmd.flags.Usage()
		return exitConfig
	}
	if code, ok = cmd.connect(); !ok {
		return code
	}
	data, code, ok := cmd.call(http.MethodGet, portalsAPI, nil)
	if !ok {
		return code
	}
	var list irc.AdminPortals
	if err := json.Unmarshal(data, &list); err != nil {
		return cmd.failf(exitRuntime, "the admin API answered with something that is not a portal list")
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
	cmd := newAdminCommand("custodian portal", "Usage: custodian portal unlink|reset <!room:server | #alias:server> [-c config.yaml] [--yes]\n\n"+
		"unlink: the room is no longer bridged; the bridge leaves the channel and frees the channel's alias.\n"+
		"reset:  the channel gets a new portal room with its alias; the old room points to it and the bridge leaves it.\n\n", stderr)
	yes := cmd.flags.Bool("yes", false, "do not ask for confirmation")
	positional, code, ok := parsePositional(cmd.flags, args)
	if !ok {
		return code
	}
	if len(positional) != 2 || (positional[0] != "unlink" && positional[0] != "reset") {
		cmd.failf(exitConfig, "want unlink or reset and one room ID or alias")
		cmd.flags.Usage()
		return exitConfig
	}
	op, ref := positional[0], positional[1]
	if !strings.HasPrefix(ref, "!") && !strings.HasPrefix(ref, "#") || !strings.Contains(ref, ":") {
		return cmd.failf(exitConfig, "%q is not a room ID (!room:server) or alias (#alias:server)", ref)
	}
	if code, ok = cmd.connect(); !ok {
		return code
	}
	if !*yes {
		what := "This unlinks " + ref + " from its IRC channel: the room stays, but is no longer bridged."
		if op == "reset" {
			what = "This gives the IRC channel of " + ref + " a new portal room; the bridge leaves the old one."
		}
		if !cmd.confirm(what+" Type "+op+" to confirm: ", op, "changed") {
			return exitConfig
		}
	}
	data, code, ok := cmd.call(http.MethodPost, portalsAPI+"/"+url.PathEscape(ref)+"/"+op, []byte("{}"))
	if !ok {
		return code
	}
	var change irc.AdminPortalChange
	if err := json.Unmarshal(data, &change); err != nil || change.Old == nil {
		return cmd.failf(exitRuntime, "the admin API answered with something that is not a portal change")
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
