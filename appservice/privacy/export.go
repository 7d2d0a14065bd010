package privacy

import (
	"context"
	"encoding/base64"
	"encoding/json"
	"fmt"
	"slices"
	"strings"
	"time"
	"unicode/utf8"

	"maunium.net/go/mautrix/id"
)

// ExportSchemaVersion is the version of the layout of [Export]'s JSON. It changes only when the
// layout changes incompatibly; new modules, tables and columns do not change it.
const ExportSchemaVersion = 1

// Export is everything Custodian holds about one user, as the user or an admin gets it: one
// section per module (the core and each bridge), one entry per declared table, with the rows
// about the user. Secret columns are listed, never their values.
type Export struct {
	// SchemaVersion is [ExportSchemaVersion].
	SchemaVersion int `json:"schema_version"`
	// GeneratedAt is when the export was made.
	GeneratedAt time.Time `json:"generated_at"`
	// User is the user the export is about.
	User id.UserID `json:"user"`
	// Modules maps module (CoreModule or a bridge ID) → table → what the table holds about the
	// user. Every declared table appears, also without rows.
	Modules map[string]map[string]*ExportTable `json:"modules"`
}

// ExportTable is what one declared table holds about the user.
type ExportTable struct {
	// Description says in plain words what the table holds.
	Description string `json:"description"`
	// OnErasure says what erasure does with the rows: "cascade" and "delete_rows" delete them,
	// "set_null" keeps the row (shared configuration) but removes the user from it, "retain"
	// keeps it for RetainReason until the retention ends.
	OnErasure string `json:"on_erasure"`
	// RetainReason is the declared reason for keeping rows on erasure.
	RetainReason string `json:"retain_reason,omitempty"`
	// Retention is how long rows are kept, in words ("14 days"); empty for as long as the user's
	// data is kept.
	Retention string `json:"retention,omitempty"`
	// SecretColumns lists the columns holding sealed secrets, which rows show as "[redacted]".
	SecretColumns []string `json:"secret_columns,omitempty"`
	// RowCount is the number of rows about the user.
	RowCount int `json:"row_count"`
	// Rows are the rows, with the exported, secret, time and provenance columns. Timestamps are
	// RFC 3339 in UTC, binary values base64, JSON text embedded as JSON. Empty (never null) if
	// there are none.
	Rows []map[string]any `json:"rows"`
}

// redactedValue stands for a secret column's value in exports.
const redactedValue = "[redacted]"

// Export collects everything Custodian holds about user, from every module's declared tables.
// It only reads; it may be called concurrently and for a user Custodian knows nothing about (the
// tables are then empty). Secrets are never read: the query only asks whether each is set.
func (e *Engine) Export(ctx context.Context, user id.UserID) (*Export, error) {
	if err := CheckUserID(user); err != nil {
		return nil, err
	}
	out := &Export{
		SchemaVersion: ExportSchemaVersion,
		GeneratedAt:   e.now().UTC().Truncate(time.Millisecond),
		User:          user,
		Modules:       make(map[string]map[string]*ExportTable),
	}
	inv := e.host.Inventory()
	for _, module := range sortedKeys(inv) {
		tables := make(map[string]*ExportTable)
		for _, ut := range inv[module] {
			et, err := e.exportTable(ctx, ut, user)
			if err != nil {
				return nil, fmt.Errorf("failed to export %s: %w", ut.Table, err)
			}
			tables[ut.Table] = et
		}
		out.Modules[module] = tables
	}
	return out, nil
}

// EffectiveRetention returns how long ut's rows are kept: its retention class's configured
// limit, else its Retention. Zero keeps them as long as the user's data.
func (e *Engine) EffectiveRetention(ut UserTable) time.Duration {
	if ut.RetentionClass != "" {
		return e.host.Retention(ut.RetentionClass)
	}
	return ut.Retention
}

// exportColumns returns the columns an export shows for ut, in order: exported, time,
// provenance, then secret columns.
func exportColumns(ut UserTable) []string {
	var cols []string
	for _, col := range slices.Concat(ut.Export, []string{ut.TimeColumn, ut.RoomColumn, ut.SourceEventColumn}, ut.Secret) {
		if col != "" && !slices.Contains(cols, col) {
			cols = append(cols, col)
		}
	}
	return cols
}

func (e *Engine) exportTable(ctx context.Context, ut UserTable, user id.UserID) (*ExportTable, error) {
	et := &ExportTable{
		Description:   ut.Description,
		OnErasure:     ut.Policy.String(),
		RetainReason:  ut.Reason,
		SecretColumns: ut.Secret,
		Rows:          []map[string]any{},
	}
	if ret := e.EffectiveRetention(ut); ret > 0 {
		et.Retention = DescribeDuration(ret)
	}
	cols := exportColumns(ut)
	selects := make([]string, 0, len(cols)+1)
	// A constant first column, so that a table with nothing to show still yields its rows.
	selects = append(selects, "1")
	for _, col := range cols {
		if slices.Contains(ut.Secret, col) {
			// Never read a secret, not even into memory: only whether it is set.
			selects = append(selects, fmt.Sprintf("CASE WHEN %[1]s IS NULL THEN 0 ELSE 1 END", quoteIdent(col)))
		} else {
			selects = append(selects, quoteIdent(col))
		}
	}
	query := fmt.Sprintf(`SELECT %s FROM %s WHERE %s`, strings.Join(selects, ", "), quoteIdent(ut.Table), ut.userCondition())
	if ut.TimeColumn != "" {
		query += " ORDER BY " + quoteIdent(ut.TimeColumn)
	}
	rows, err := e.db.Query(ctx, query, user)
	if err != nil {
		return nil, err
	}
	defer rows.Close()
	types, err := rows.ColumnTypes()
	if err != nil {
		return nil, err
	}
	for rows.Next() {
		values := make([]any, len(selects))
		ptrs := make([]any, len(selects))
		for i := range values {
			ptrs[i] = &values[i]
		}
		if err = rows.Scan(ptrs...); err != nil {
			return nil, err
		}
		row := make(map[string]any, len(cols))
		for i, col := range cols {
			v := values[i+1]
			switch {
			case slices.Contains(ut.Secret, col):
				if n, ok := v.(int64); ok && n != 0 {
					row[col] = redactedValue
				} else {
					row[col] = nil
				}
			default:
				isTime := col == ut.TimeColumn || col == "at" || strings.HasSuffix(col, "_at")
				row[col] = exportValue(v, types[i+1].DatabaseTypeName(), isTime)
			}
		}
		et.Rows = append(et.Rows, row)
	}
	if err = rows.Err(); err != nil {
		return nil, err
	}
	et.RowCount = len(et.Rows)
	if len(cols) == 0 {
		// Nothing to show but the count.
		et.Rows = []map[string]any{}
	}
	return et, nil
}

// exportValue turns a scanned database value into what the export's JSON shows. dbType is the
// column's database type name; isTime marks a millisecond timestamp column.
func exportValue(v any, dbType string, isTime bool) any {
	dbType = strings.ToUpper(dbType)
	switch x := v.(type) {
	case nil:
		return nil
	case []byte:
		if dbType == "BYTEA" || dbType == "BLOB" || !utf8.Valid(x) {
			return base64.StdEncoding.EncodeToString(x)
		}
		return exportValue(string(x), dbType, isTime)
	case string:
		if dbType == "BOOL" || dbType == "BOOLEAN" {
			return x == "t" || x == "true" || x == "1"
		}
		if isTime || dbType == "INT8" || dbType == "INT4" || dbType == "BIGINT" {
			var n int64
			if _, err := fmt.Sscan(x, &n); err == nil {
				return exportValue(n, dbType, isTime)
			}
		}
		trimmed := strings.TrimSpace(x)
		if (strings.HasPrefix(trimmed, "{") || strings.HasPrefix(trimmed, "[")) && json.Valid([]byte(trimmed)) {
			return json.RawMessage(trimmed)
		}
		return x
	case int64:
		if dbType == "BOOLEAN" || dbType == "BOOL" {
			return x != 0
		}
		if isTime && x > 0 {
			return time.UnixMilli(x).UTC()
		}
		return x
	case time.Time:
		return x.UTC()
	default:
		return x
	}
}

// DescribeDuration writes a retention in words: "14 days", "36h0m0s".
func DescribeDuration(d time.Duration) string {
	if d%(24*time.Hour) == 0 {
		return Plural(int64(d/(24*time.Hour)), "day", "days")
	}
	return d.String()
}

// Holding is what one declared table holds about a user, for the access summary (!mydata).
type Holding struct {
	// Table is the declaration.
	Table UserTable
	// Rows is the number of rows about the user; never zero in [Engine.Holdings].
	Rows int64
	// Retention is how long the rows are kept (see [Engine.EffectiveRetention]).
	Retention time.Duration
}

// Holdings returns, per module, the declared tables that hold rows about user, in inventory
// order, without the erasure bookkeeping. Modules holding nothing are left out. It only reads.
func (e *Engine) Holdings(ctx context.Context, user id.UserID) (map[string][]Holding, error) {
	out := make(map[string][]Holding)
	inv := e.host.Inventory()
	for _, module := range sortedKeys(inv) {
		for _, ut := range inv[module] {
			if slices.Contains(bookkeepingTables, ut.Table) {
				continue
			}
			n, err := e.countUserRows(ctx, ut, user)
			if err != nil {
				return nil, err
			}
			if n > 0 {
				out[module] = append(out[module], Holding{Table: ut, Rows: n, Retention: e.EffectiveRetention(ut)})
			}
		}
	}
	return out, nil
}
