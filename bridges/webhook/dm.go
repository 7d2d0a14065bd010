package webhook

import (
	"context"
	"fmt"

	"maunium.net/go/mautrix/event"
	"maunium.net/go/mautrix/format"
	"maunium.net/go/mautrix/id"

	"github.com/custodian-matrix/custodian/appservice"
)

// sendPrivately sends markdown to userID as a notice through the core's one private path
// ([appservice.Host.NotifyUser]): their management room, which is the direct chat they run a
// command in, or a private room the core opens and reopens when the user left it or anyone
// else joined it. cause and purpose name the message: sending the same pair again (a replay
// after a crash) posts it once. The core never logs the content, which carries URLs and
// signing secrets.
func (br *Bridge) sendPrivately(ctx context.Context, userID id.UserID, markdown string, cause id.EventID, purpose string) error {
	content := format.RenderMarkdown(markdown, true, false)
	content.MsgType = event.MsgNotice
	content.Mentions = &event.Mentions{}
	_, _, err := br.host.NotifyUser(ctx, userID, appservice.Notice{Cause: string(cause), Purpose: purpose, Content: &content})
	if err != nil {
		return fmt.Errorf("failed to send private notice: %w", err)
	}
	return nil
}
