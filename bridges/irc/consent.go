package irc

import (
	"context"
	"errors"
	"fmt"
	"sort"
	"strings"
	"time"

	"github.com/ergochat/irc-go/ircmsg"
	"github.com/rs/zerolog"
	"maunium.net/go/mautrix"
	"maunium.net/go/mautrix/event"
	"maunium.net/go/mautrix/format"
	"maunium.net/go/mautrix/id"

	"github.com/custodian-matrix/custodian/appservice"
	"github.com/custodian-matrix/custodian/appservice/vault"
	"github.com/custodian-matrix/custodian/bridges/irc/ircconv"
	"github.com/custodian-matrix/custodian/bridges/irc/ircdb"
	"github.com/custodian-matrix/custodian/bridges/irc/ircline"
)

// Consent of a channel's operators (link_consent: required), as matrix-appservice-irc's
// provisioning asks for it: !irc link looks up the channel's operators with NAMES, sends one of
// them (the first by name, or the one the linker names) a private message, and links the room
// only when that operator answers "yes" in time. Pending requests live in memory only, one per
// channel: when the bridge stops, each is refused and its linker told so; after a crash the
// operator's late answer gets "no request waiting", and the linker, who was told how long the
// operator has, asks again.
//
// Channel operators talk to the bridge's connection in private messages:
//
//	yes [#channel]     agree to the link request sent to you
//	no [#channel]      refuse it
//	unlink #channel    unlink the channel's portal (you must be an operator of it right now)
//
// The bridge answers these with NOTICEs and ignores every other private message.

// namesTimeout bounds how long a NAMES lookup of a channel's operators waits for the server.
const namesTimeout = 30 * time.Second

// opPrefixes are the NAMES prefixes of channel operators (owner, admin, operator); half-ops
// (%) and voices (+) are not operators.
const opPrefixes = "~&@"

// linkRequest is a link waiting for a channel operator's answer.
type linkRequest struct {
	// channel is folded; name as the linker wrote it.
	channel, name string
	roomID        id.RoomID
	linker        id.UserID
	eventID       id.EventID
	// key is the channel key given with the command, if any; it is sealed once the link is
	// made, and only held in memory until then.
	key vault.Secret
	// op is the nick asked.
	op       string
	deadline time.Time
}

// namesQuery collects one NAMES reply: the members (folded → nick) and which are operators.
type namesQuery struct {
	members map[string]string
	ops     map[string]bool
	done    chan struct{}
}

// channelOps looks up the operators of channel (as written) with NAMES on the bridge's
// connection, and returns them folded → nick, the bridge's own connections included. It waits for
// the answer until ctx ends or namesTimeout passes. It must not run on the network's worker,
// which handles the reply.
func (n *network) channelOps(ctx context.Context, name string) (map[string]string, error) {
	ctx, cancel := context.WithTimeout(ctx, namesTimeout)
	defer cancel()
	c, err := n.bot.conn(ctx)
	if err != nil {
		return nil, fmt.Errorf("bridge not connected: %w", err)
	}
	folded := n.fold(name)
	n.mu.Lock()
	q := n.namesWait[folded]
	if q == nil {
		q = &namesQuery{members: make(map[string]string), ops: make(map[string]bool), done: make(chan struct{})}
		n.namesWait[folded] = q
	}
	n.mu.Unlock()
	if err = c.Send(ctx, nil, "NAMES", name); err != nil {
		return nil, fmt.Errorf("failed to send NAMES: %w", err)
	}
	select {
	case <-q.done:
	case <-ctx.Done():
		n.mu.Lock()
		if n.namesWait[folded] == q {
			delete(n.namesWait, folded)
		}
		n.mu.Unlock()
		return nil, fmt.Errorf("no NAMES reply: %w", ctx.Err())
	}
	ops := make(map[string]string)
	for f, nick := range q.members {
		if q.ops[f] {
			ops[f] = nick
		}
	}
	return ops, nil
}

// collectNames adds a 353 line's entries to a waiting NAMES lookup of its channel.
func (n *network) collectNames(msg *ircmsg.Message) {
	channel := n.fold(ircline.Param(msg, 2))
	n.mu.Lock()
	defer n.mu.Unlock()
	q := n.namesWait[channel]
	if q == nil {
		return
	}
	for _, entry := range strings.Fields(ircline.Param(msg, 3)) {
		nick := strings.TrimLeft(entry, "~&@%+")
		prefixes := entry[:len(entry)-len(nick)]
		if i := strings.IndexByte(nick, '!'); i >= 0 {
			nick = nick[:i]
		}
		if nick == "" {
			continue
		}
		f := n.fold(nick)
		q.members[f] = nick
		q.ops[f] = strings.ContainsAny(prefixes, opPrefixes)
	}
}

// finishNames completes a waiting NAMES lookup of a 366 line's channel.
func (n *network) finishNames(msg *ircmsg.Message) {
	channel := n.fold(ircline.Param(msg, 1))
	n.mu.Lock()
	defer n.mu.Unlock()
	if q := n.namesWait[channel]; q != nil {
		delete(n.namesWait, channel)
		close(q.done)
	}
}

// askConsent asks an operator of channel to agree to link the command's room, and replies to
// the linker. opNick, if not empty, is the operator the linker asked for.
func (br *Bridge) askConsent(ctx context.Context, ce *appservice.CommandEvent, n *network, channel, opNick string, key vault.Secret) error {
	folded := n.fold(channel)
	n.mu.Lock()
	pending := n.consents[folded]
	limit := n.consentLimit(folded, channel, ce.Sender, ce.RoomID)
	n.mu.Unlock()
	if pending != nil && pending.eventID == ce.Event.ID {
		return ce.Reply(ctx, fmt.Sprintf("I am waiting for %s to answer.", format.SafeMarkdownCode(pending.op)))
	}
	if limit != "" {
		return &appservice.UserError{Message: limit}
	}
	ops, err := n.channelOps(ctx, channel)
	if err != nil {
		return &appservice.UserError{
			Message: fmt.Sprintf("I could not look up the operators of %s on %s, whose consent the link needs. Try again later.", channel, n.cfg.Name),
			Err:     err,
		}
	}
	op := ""
	if opNick != "" {
		op = ops[n.fold(opNick)]
		if op == "" || n.isOurNick(n.fold(opNick)) {
			return appservice.UserErrorf("%s is not an operator of %s on %s right now.", format.SafeMarkdownCode(opNick), channel, n.cfg.Name)
		}
	} else {
		names := make([]string, 0, len(ops))
		for f := range ops {
			// The bridge's own connections cannot consent for the channel's people.
			if !n.isOurNick(f) {
				names = append(names, f)
			}
		}
		sort.Strings(names)
		if len(names) > 0 {
			op = ops[names[0]]
		}
	}
	if op == "" {
		return appservice.UserErrorf("%s on %s has no operator I could ask for consent (it does not exist, or hides its members). "+
			"The channel's operators decide whether it is bridged.", channel, n.cfg.Name)
	}
	req := &linkRequest{
		channel: folded, name: channel, roomID: ce.RoomID, linker: ce.Sender, eventID: ce.Event.ID, key: key, op: op,
		deadline: br.clock.Now().Add(n.cfg.ConsentTimeout),
	}
	n.mu.Lock()
	if limit := n.consentLimit(folded, channel, ce.Sender, ce.RoomID); limit != "" {
		n.mu.Unlock()
		return &appservice.UserError{Message: limit}
	}
	n.consents[folded] = req
	n.mu.Unlock()
	c, err := n.bot.conn(ctx)
	if err == nil {
		err = c.Send(ctx, nil, "PRIVMSG", op, fmt.Sprintf("%s wants to bridge %s to the Matrix room %s. Reply \"yes\" or \"no\" (within %s).",
			ce.Sender, channel, ce.RoomID, n.cfg.ConsentTimeout))
	}
	if err != nil {
		n.dropConsent(req)
		return fmt.Errorf("failed to ask for consent: %w", err)
	}
	zerolog.Ctx(ctx).Info().Str("network", n.cfg.ID).Msg("Asked a channel operator to agree to a link")
	return ce.Reply(ctx, fmt.Sprintf("I asked %s, an operator of %s on %s, whether this room may be bridged there. "+
		"I link it once they agree, and tell you their answer; without one within %s, the request is refused.",
		format.SafeMarkdownCode(op), channel, n.cfg.Name, n.cfg.ConsentTimeout))
}

// maxPendingConsents bounds the link requests waiting on one network, whoever made them: each
// makes the bridge's connection PRIVMSG a channel operator, and a network may K-line a client
// that messages many strangers.
const maxPendingConsents = 20

// consentLimit returns why a new request for channel (folded) by linker in roomID may not be
// made now, or "" if it may. Each linker and each room has at most one request waiting, each
// channel one, and the network maxPendingConsents. n.mu must be held.
func (n *network) consentLimit(folded, name string, linker id.UserID, roomID id.RoomID) string {
	if n.consents[folded] != nil {
		return fmt.Sprintf("A request to link %s is already waiting for its operators' answer; try again later.", name)
	}
	for _, req := range n.consents {
		switch {
		case req.linker == linker:
			return fmt.Sprintf("Your request to link %s is still waiting for its operators' answer; "+
				"you can have one request waiting at a time.", req.name)
		case req.roomID == roomID:
			return fmt.Sprintf("A request to link this room to %s is still waiting for its operators' answer; try again later.", req.name)
		}
	}
	if len(n.consents) >= maxPendingConsents {
		return fmt.Sprintf("Too many link requests are waiting for operators on %s right now; try again later.", n.cfg.Name)
	}
	return ""
}

// dropConsentsWhere removes the pending requests that match, without telling anyone, and
// forgets the channel keys they held. It returns how many it removed.
func (n *network) dropConsentsWhere(match func(*linkRequest) bool) int {
	n.mu.Lock()
	defer n.mu.Unlock()
	dropped := 0
	for folded, req := range n.consents {
		if match(req) {
			delete(n.consents, folded)
			req.key = vault.Secret{}
			dropped++
		}
	}
	return dropped
}

// dropConsent removes req from the pending requests; it reports whether it was still there, so
// that only one of an answer, the timeout and a stop settles it.
func (n *network) dropConsent(req *linkRequest) bool {
	n.mu.Lock()
	defer n.mu.Unlock()
	if n.consents[req.channel] != req {
		return false
	}
	delete(n.consents, req.channel)
	return true
}

// onBotPrivate handles a private PRIVMSG to the bridge's connection: a channel operator's
// answer to a link request or unlink. The work that needs a NAMES lookup runs on its own
// goroutine, since the network's worker handles the reply.
func (n *network) onBotPrivate(ctx context.Context, in inbound) {
	msg := &in.msg
	if msg.Command != "PRIVMSG" || !strings.ContainsRune(msg.Source, '!') {
		return
	}
	nick := msg.Nick()
	words := strings.Fields(ircconv.Strip(ircconv.DecodeText(ircline.Param(msg, 1))))
	if len(words) == 0 || len(words) > 2 || n.isOurNick(n.fold(nick)) {
		return
	}
	verb := strings.ToLower(strings.TrimRight(words[0], ".!"))
	arg := ""
	if len(words) == 2 {
		arg = words[1]
	}
	switch verb {
	case "yes", "no":
		req, problem := n.requestFor(nick, arg)
		if req == nil {
			n.noticeTo(ctx, nick, problem)
			return
		}
		n.br.background(func(ctx context.Context) { n.answerConsent(ctx, req, nick, verb == "yes") })
	case "unlink":
		if arg == "" {
			n.noticeTo(ctx, nick, "Say \"unlink #channel\".")
			return
		}
		n.br.background(func(ctx context.Context) { n.opUnlink(ctx, nick, arg) })
	}
}

// requestFor returns the pending request sent to nick (for channel, if not empty), or nil and
// what to tell them.
func (n *network) requestFor(nick, channel string) (*linkRequest, string) {
	n.mu.Lock()
	defer n.mu.Unlock()
	var found []*linkRequest
	for _, req := range n.consents {
		if n.fold(req.op) == n.fold(nick) && (channel == "" || n.fold(channel) == req.channel) {
			found = append(found, req)
		}
	}
	switch len(found) {
	case 0:
		return nil, "I have no link request waiting for your answer (it expired, or the bridge restarted)."
	case 1:
		return found[0], ""
	}
	return nil, "Several link requests wait for your answer: say \"yes #channel\" or \"no #channel\"."
}

// noticeTo sends a NOTICE to nick from the bridge's connection, if connected.
func (n *network) noticeTo(ctx context.Context, nick, text string) {
	if c := n.bot.current(); c != nil {
		if err := c.Send(ctx, nil, "NOTICE", nick, text); err != nil {
			zerolog.Ctx(ctx).Debug().Err(err).Msg("Failed to send NOTICE")
		}
	}
}

// answerConsent settles req with an operator's answer: on yes, once the answering nick is
// confirmed to be an operator of the channel right now, it links the room.
func (n *network) answerConsent(ctx context.Context, req *linkRequest, nick string, yes bool) {
	br := n.br
	if !yes {
		if !n.dropConsent(req) {
			return
		}
		n.noticeTo(ctx, nick, "Understood: I will not bridge "+req.name+".")
		br.notifyUser(ctx, req.linker, req.eventID, "link-consent", fmt.Sprintf(
			"%s, an operator of %s on %s, refused to bridge it to %s.", format.SafeMarkdownCode(nick), req.name, n.cfg.Name,
			format.SafeMarkdownCode(string(req.roomID))))
		zerolog.Ctx(ctx).Info().Str("network", n.cfg.ID).Msg("A channel operator refused a link")
		return
	}
	ops, err := n.channelOps(ctx, req.name)
	if err != nil || ops[n.fold(nick)] == "" {
		// Not settled: an operator may still answer.
		n.noticeTo(ctx, nick, "You are not an operator of "+req.name+" right now, so I cannot take your answer.")
		return
	}
	if !n.dropConsent(req) {
		return
	}
	prov := appservice.Provenance{Actor: req.linker, RoomID: req.roomID, EventID: req.eventID, At: br.clock.Now()}
	outcome, err := br.linkRoom(ctx, n, req.roomID, req.name, req.key, prov)
	if err != nil {
		zerolog.Ctx(ctx).Err(err).Msg("Failed to link a room after consent")
		outcome = "something went wrong, and the room was not linked"
	}
	n.noticeTo(ctx, nick, "Thank you: "+ircconv.Strip(outcome))
	br.notifyUser(ctx, req.linker, req.eventID, "link-consent", fmt.Sprintf("%s, an operator of %s on %s, agreed: %s",
		format.SafeMarkdownCode(nick), req.name, n.cfg.Name, outcome))
}

// linkRoom links roomID to channel (as written) with the provenance of the command that asked
// for it, storing key if given; it returns what happened, in words for the linker. The error is
// for failures the linker cannot fix.
func (br *Bridge) linkRoom(ctx context.Context, n *network, roomID id.RoomID, channel string, key vault.Secret, prov appservice.Provenance) (string, error) {
	if existing, err := br.targetFor(ctx, roomID); err != nil {
		return "", err
	} else if existing != nil {
		if existing.portal != nil && existing.portal.SourceEventID == prov.EventID {
			return fmt.Sprintf("the room is bridged to %s.", existing.name), nil
		}
		return "the room " + string(roomID) + " is already bridged to IRC, so I did not link it.", nil
	}
	folded := n.fold(channel)
	var sealed []byte
	setKey := false
	if !key.IsZero() {
		var err error
		if sealed, err = br.sealChannelKey(ctx, n, folded, key, prov); err != nil {
			var userErr *appservice.UserError
			if errors.As(err, &userErr) {
				return userErr.Message, nil
			}
			return "", err
		}
		if n.portal(ctx, folded) == nil {
			// The bridge's connection joins with it right away.
			n.setChannelKey(folded, key.Reveal())
			setKey = true
		}
	}
	p, err := br.recordPortal(ctx, n, &ircdb.Portal{
		Network: n.cfg.ID, Channel: folded, ChannelName: channel, RoomID: roomID, CreatedAt: br.clock.Now(),
	}, prov)
	if err != nil && setKey {
		n.setChannelKey(folded, "")
	}
	if errors.Is(err, errPortalExists) {
		return fmt.Sprintf("%s is already bridged to another room, so I did not link it.", channel), nil
	} else if err != nil {
		return "", err
	}
	if sealed != nil {
		if err = br.putChannelKey(ctx, n, folded, sealed, prov); err != nil {
			return "", err
		}
	}
	zerolog.Ctx(ctx).Info().Str("network", n.cfg.ID).Bool("keyed", !key.IsZero()).Msg("Linked room to IRC channel")
	return fmt.Sprintf("the room %s is now bridged to %s.", string(p.RoomID), channel), nil
}

// opUnlink unlinks a portal at the request of nick, once NAMES confirms they are an operator of
// its channel right now. The room is told who unlinked it.
func (n *network) opUnlink(ctx context.Context, nick, channel string) {
	portal := n.portal(ctx, n.fold(channel))
	if portal == nil {
		n.noticeTo(ctx, nick, channel+" is not bridged to Matrix.")
		return
	}
	ops, err := n.channelOps(ctx, portal.ChannelName)
	if err != nil || ops[n.fold(nick)] == "" {
		n.noticeTo(ctx, nick, "Only an operator of "+portal.ChannelName+" can unlink it.")
		return
	}
	content := format.RenderMarkdown(fmt.Sprintf("%s, an operator of %s on %s, unlinked this room from the channel.",
		format.SafeMarkdownCode(nick), portal.ChannelName, n.cfg.Name), true, false)
	content.MsgType = event.MsgNotice
	if _, err = n.br.host.Bot().SendMessageEvent(ctx, portal.RoomID, event.EventMessage, &content, mautrix.ReqSendEvent{}); err != nil {
		zerolog.Ctx(ctx).Warn().Err(err).Msg("Failed to tell the room it was unlinked")
	}
	if err = n.br.unlinkPortal(ctx, portal, "Unlinked by a channel operator"); err != nil {
		zerolog.Ctx(ctx).Err(err).Msg("Failed to unlink portal for a channel operator")
		n.noticeTo(ctx, nick, "Something went wrong; "+portal.ChannelName+" is still bridged.")
		return
	}
	zerolog.Ctx(ctx).Info().Str("network", n.cfg.ID).Msg("A channel operator unlinked a portal")
	n.noticeTo(ctx, nick, portal.ChannelName+" is no longer bridged to Matrix.")
}

// expireConsents refuses the link requests whose operator did not answer by now.
func (br *Bridge) expireConsents(ctx context.Context, now time.Time) {
	for _, netID := range br.netIDs {
		n := br.networks[netID]
		n.mu.Lock()
		var expired []*linkRequest
		for _, req := range n.consents {
			if !now.Before(req.deadline) {
				expired = append(expired, req)
			}
		}
		n.mu.Unlock()
		for _, req := range expired {
			if !n.dropConsent(req) {
				continue
			}
			br.notifyUser(ctx, req.linker, req.eventID, "link-consent", fmt.Sprintf(
				"%s, the operator of %s on %s I asked, did not answer within %s, so the room %s is not bridged. "+
					"Ask the channel's operators, then run the command again.",
				format.SafeMarkdownCode(req.op), req.name, n.cfg.Name, n.cfg.ConsentTimeout, format.SafeMarkdownCode(string(req.roomID))))
		}
	}
}

// refuseConsents refuses every pending link request because the bridge stops, telling each
// linker.
func (br *Bridge) refuseConsents(ctx context.Context) {
	for _, netID := range br.netIDs {
		n := br.networks[netID]
		n.mu.Lock()
		reqs := make([]*linkRequest, 0, len(n.consents))
		for _, req := range n.consents {
			reqs = append(reqs, req)
		}
		n.mu.Unlock()
		for _, req := range reqs {
			if n.dropConsent(req) {
				br.notifyUser(ctx, req.linker, req.eventID, "link-consent", fmt.Sprintf(
					"The bridge restarted before an operator of %s on %s answered, so the room %s is not bridged. Run the command again.",
					req.name, n.cfg.Name, format.SafeMarkdownCode(string(req.roomID))))
			}
		}
	}
}

// background runs fn on its own goroutine with the bridge's run context; Stop waits for it.
func (br *Bridge) background(fn func(ctx context.Context)) {
	br.janitor.Add(1)
	go func() {
		defer br.janitor.Done()
		fn(br.runCtx)
	}()
}
