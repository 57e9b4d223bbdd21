// Package output prints the results of kubectl-agentmesh: aligned tables
// for people, JSON or YAML (-o json|yaml) for scripts, from the same value.
package output

import (
	"encoding/json"
	"fmt"
	"io"
	"strings"
	"text/tabwriter"

	"sigs.k8s.io/yaml"
)

// Formats of -o. The empty format is the human table.
const (
	FormatTable = ""
	FormatJSON  = "json"
	FormatYAML  = "yaml"
)

// ValidFormat reports whether f is a format of -o.
func ValidFormat(f string) error {
	switch f {
	case FormatTable, "table", FormatJSON, FormatYAML:
		return nil
	}
	return fmt.Errorf("unknown output format %q: use json or yaml (or nothing, for a table)", f)
}

// Human is a value that also prints itself for people.
type Human interface {
	WriteHuman(w io.Writer) error
}

// Write prints v in format f: JSON or YAML of v, or v's own human form.
func Write(w io.Writer, f string, v Human) error {
	switch f {
	case FormatJSON:
		b, err := json.MarshalIndent(v, "", "  ")
		if err != nil {
			return err
		}
		_, err = fmt.Fprintf(w, "%s\n", b)
		return err
	case FormatYAML:
		b, err := yaml.Marshal(v)
		if err != nil {
			return err
		}
		_, err = w.Write(b)
		return err
	case FormatTable, "table":
		return v.WriteHuman(w)
	}
	return ValidFormat(f)
}

// Table is a table with a header, aligned as kubectl aligns its own.
type Table struct {
	Header []string
	Rows   [][]string
}

// Add appends a row.
func (t *Table) Add(cells ...string) { t.Rows = append(t.Rows, cells) }

// Write prints the table: upper-case header, columns three spaces apart,
// empty cells as "-" so that columns stay readable by awk.
func (t *Table) Write(w io.Writer) error {
	tw := tabwriter.NewWriter(w, 6, 4, 3, ' ', 0)
	if len(t.Header) > 0 {
		h := make([]string, len(t.Header))
		for i, c := range t.Header {
			h[i] = strings.ToUpper(c)
		}
		if _, err := fmt.Fprintln(tw, strings.Join(h, "\t")); err != nil {
			return err
		}
	}
	for _, r := range t.Rows {
		cells := make([]string, len(r))
		for i, c := range r {
			if c == "" {
				c = "-"
			}
			cells[i] = strings.ReplaceAll(c, "\t", " ")
		}
		if _, err := fmt.Fprintln(tw, strings.Join(cells, "\t")); err != nil {
			return err
		}
	}
	return tw.Flush()
}

// Section prints a title line, then the table, then a blank line.
func Section(w io.Writer, title string, t *Table) error {
	if _, err := fmt.Fprintf(w, "%s\n", title); err != nil {
		return err
	}
	if err := t.Write(w); err != nil {
		return err
	}
	_, err := fmt.Fprintln(w)
	return err
}

// Fields prints "key: value" lines with the values aligned.
func Fields(w io.Writer, kv [][2]string) error {
	tw := tabwriter.NewWriter(w, 0, 4, 1, ' ', 0)
	for _, p := range kv {
		v := p[1]
		if v == "" {
			v = "-"
		}
		if _, err := fmt.Fprintf(tw, "%s:\t%s\n", p[0], v); err != nil {
			return err
		}
	}
	return tw.Flush()
}
