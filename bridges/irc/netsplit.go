package irc

import (
	"context"
	"strings"
	"time"
)

// maxSplitQuits bounds the quits a network holds back at once; beyond it, quits take effect at
// once, as without damping. A netsplit of a large network can take thousands of users away
// together, and each is a few hundred bytes here.
const maxSplitQuits = 10000

// splitQuit is an IRC user who quit in what looks like a netsplit: their ghost stays in the
// portals of channels until deadline, and leaves those they have not rejoined by then.
type splitQuit struct {
	nick     string
	channels map[string]struct{}
	deadline time.Time
}

// looksLikeNetsplit reports whether a QUIT reason is the one servers give when a server link
// breaks: the names of the two servers, "hub.example.net leaf.example.net" (or, on networks that
// hide their servers, "*.net *.split"). Clients cannot send such a reason themselves: servers
// prefix theirs with "Quit: ".
func looksLikeNetsplit(reason string) bool {
	parts := strings.Split(reason, " ")
	if len(parts) != 2 || parts[0] == parts[1] {
		return false
	}
	for _, host := range parts {
		if !strings.Contains(host, ".") || strings.HasPrefix(host, ".") || strings.HasSuffix(host, ".") {
			return false
		}
		for _, c := range []byte(host) {
			if !(c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' || c == '.' || c == '-' || c == '*') {
				return false
			}
		}
	}
	return true
}

// holdSplitQuit holds back the leave of nick, who quit with reason, if the reason looks like a
// netsplit and quit_debounce is on; it reports whether it did. The nick stays a member of its
// channels meanwhile.
func (n *network) holdSplitQuit(nick, reason string) bool {
	d := n.br.cfg.QuitDebounce
	if d <= 0 || !looksLikeNetsplit(reason) {
		return false
	}
	channels := n.channelsOf(nick)
	if len(channels) == 0 {
		return false
	}
	folded := n.fold(nick)
	sq := &splitQuit{nick: nick, channels: make(map[string]struct{}, len(channels)), deadline: n.br.clock.Now().Add(d)}
	for _, ch := range channels {
		sq.channels[ch] = struct{}{}
	}
	n.mu.Lock()
	defer n.mu.Unlock()
	if len(n.splits) >= maxSplitQuits && n.splits[folded] == nil {
		return false
	}
	n.splits[folded] = sq
	return true
}

// splitRejoinedLocked notes that nick (folded) is in channel (folded) again: a held-back leave
// there is dropped. n.mu must be held.
func (n *network) splitRejoinedLocked(channel, folded string) {
	sq := n.splits[folded]
	if sq == nil {
		return
	}
	delete(sq.channels, channel)
	if len(sq.channels) == 0 {
		delete(n.splits, folded)
	}
}

// expireSplits makes the ghosts of users whose held-back quit is due leave the portals of the
// channels they did not rejoin. It runs on the network's worker.
func (n *network) expireSplits(ctx context.Context) {
	now := n.br.clock.Now()
	var due []*splitQuit
	n.mu.Lock()
	for folded, sq := range n.splits {
		if !now.Before(sq.deadline) {
			due = append(due, sq)
			delete(n.splits, folded)
		}
	}
	n.mu.Unlock()
	for _, sq := range due {
		for channel := range sq.channels {
			n.removeMember(ctx, channel, sq.nick, "Quit IRC (netsplit)")
		}
	}
}

// splitCheckInterval is how often held-back quits are checked for a quit_debounce of d: often
// enough that a leave is at most a quarter of d late, and not more than 20 times a second.
func splitCheckInterval(d time.Duration) time.Duration {
	return min(max(d/4, 50*time.Millisecond), 5*time.Second)
}
