package irc

import (
	"context"
	"html"
	"strings"

	"github.com/rs/zerolog"
	"maunium.net/go/mautrix/event"
	"maunium.net/go/mautrix/id"

	"github.com/custodian-matrix/custodian/bridges/irc/ircconv"
)

// addMentions makes an IRC line in a portal channel (folded) mention the Matrix users whose
// puppet nicks it names as words (see [ircconv.Mentioned]), so that their clients notify them:
// their user IDs go into m.mentions, and a line that starts by addressing one of them
// ("nick: …") gets a pill for that nick in its formatted body. Only users whose puppets are
// connected and in the channel, and who are joined to the room, are mentioned: a nick that
// matches someone who left is not a reason to notify them.
func (n *network) addMentions(ctx context.Context, channel string, roomID id.RoomID, content *event.MessageEventContent) {
	type candidate struct {
		user id.UserID
		nick string
	}
	var candidates []candidate
	n.mu.Lock()
	for user, p := range n.puppets {
		if c := p.sess.current(); c != nil && p.sess.inChannel(channel) {
			candidates = append(candidates, candidate{user: user, nick: c.Nick()})
		}
	}
	n.mu.Unlock()
	if len(candidates) == 0 {
		return
	}
	nicks := make([]string, len(candidates))
	for i, c := range candidates {
		nicks[i] = c.nick
	}
	named := ircconv.Mentioned(content.Body, nicks, n.fold)
	if len(named) == 0 {
		return
	}
	members, err := n.br.host.Bot().JoinedMembers(ctx, roomID)
	if err != nil {
		zerolog.Ctx(ctx).Warn().Err(err).Msg("Failed to get room members for mentions")
		return
	}
	for _, nick := range named {
		var user id.UserID
		for _, c := range candidates {
			if c.nick == nick {
				user = c.user
			}
		}
		if _, joined := members.Joined[user]; !joined {
			continue
		}
		content.Mentions.Add(user)
		if l, ok := ircconv.LeadingNick(content.Body, nick, n.fold); ok {
			pillLeadingNick(content, user, l)
		}
	}
}

// pillLeadingNick turns the first l bytes of content's body, a nick addressing user, into a pill
// in the formatted body (making one from the plain body if there is none). The plain body stays
// as it is: it is what clients without pills show.
func pillLeadingNick(content *event.MessageEventContent, user id.UserID, l int) {
	nick := content.Body[:l]
	pill := `<a href="` + html.EscapeString(user.URI().MatrixToURL()) + `">` + html.EscapeString(nick) + `</a>`
	if content.FormattedBody == "" {
		content.Format = event.FormatHTML
		content.FormattedBody = pill + strings.ReplaceAll(html.EscapeString(content.Body[l:]), "\n", "<br>")
		return
	}
	if rest, ok := strings.CutPrefix(content.FormattedBody, html.EscapeString(nick)); ok {
		content.FormattedBody = pill + rest
	}
}
