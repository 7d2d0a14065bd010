package ircconv

import (
	"strings"
)

// DefaultEditMaxChange is the default share of the new text's words an edit may change and
// still be sent as a correction (see [EditLine]).
const DefaultEditMaxChange = 0.5

// EditLine returns the text an edit is sent as on IRC, given the IRC text of the version it
// replaces (previous) and of the new version (next).
//
// A small change is sent as a correction in the sed style IRC users write themselves,
// "s/old words/new words/": the words that changed, with one unchanged neighbouring word when
// words were only added or only removed, so that the reader can find the place. The whole new
// text is sent as "* new text" (see [EditPrefix]) when the previous version is not known
// (previous is ""), when either version has several lines, when the changed words are more
// than maxChange of the new text's words (maxChange ≤ 0 turns corrections off), or when the
// correction would not be shorter than the whole text. ok is false when the two versions have
// the same words: such an edit (spacing, or nothing at all) has nothing to tell IRC users.
func EditLine(previous, next string, maxChange float64) (line string, ok bool) {
	full := EditPrefix + next
	if previous == "" || maxChange <= 0 || strings.ContainsRune(strings.TrimSpace(previous), '\n') ||
		strings.ContainsRune(strings.TrimSpace(next), '\n') {
		return full, true
	}
	old, cur := strings.Fields(previous), strings.Fields(next)
	prefix := 0
	for prefix < len(old) && prefix < len(cur) && old[prefix] == cur[prefix] {
		prefix++
	}
	suffix := 0
	for suffix < len(old)-prefix && suffix < len(cur)-prefix && old[len(old)-1-suffix] == cur[len(cur)-1-suffix] {
		suffix++
	}
	if prefix == len(old) && prefix == len(cur) {
		return "", false
	}
	// Only added or only removed words: take one unchanged neighbour in, so that "s/old/new/"
	// has something to find on both sides.
	if prefix+suffix == len(old) || prefix+suffix == len(cur) {
		if prefix > 0 {
			prefix--
		} else if suffix > 0 {
			suffix--
		}
	}
	oldMid, newMid := old[prefix:len(old)-suffix], cur[prefix:len(cur)-suffix]
	if float64(max(len(oldMid), len(newMid))) > maxChange*float64(len(cur)) {
		return full, true
	}
	line = "s/" + strings.Join(oldMid, " ") + "/" + strings.Join(newMid, " ") + "/"
	if len(line) >= len(full) {
		return full, true
	}
	return line, true
}
