package output

import (
	"bytes"
	"io"
	"strings"
	"testing"
)

type thing struct {
	Name string `json:"name"`
}

func (t thing) WriteHuman(w io.Writer) error {
	tab := &Table{Header: []string{"name", "empty", "last"}}
	tab.Add(t.Name, "", "x")
	tab.Add("a-much-longer-name", "y", "has\ttab")
	return tab.Write(w)
}

func TestWrite(t *testing.T) {
	tests := map[string]string{
		FormatJSON:  "{\n  \"name\": \"w\"\n}\n",
		FormatYAML:  "name: w\n",
		FormatTable: "NAME                 EMPTY   LAST\nw                    -       x\na-much-longer-name   y       has tab\n",
		"table":     "NAME                 EMPTY   LAST\nw                    -       x\na-much-longer-name   y       has tab\n",
	}
	for f, want := range tests {
		var b bytes.Buffer
		if err := Write(&b, f, thing{Name: "w"}); err != nil {
			t.Fatal(err)
		}
		if b.String() != want {
			t.Errorf("-o %q:\n%q\nwant\n%q", f, b.String(), want)
		}
	}
	if err := Write(io.Discard, "xml", thing{}); err == nil || !strings.Contains(err.Error(), `unknown output format "xml"`) {
		t.Errorf("-o xml: %v", err)
	}
}

func TestFields(t *testing.T) {
	var b bytes.Buffer
	if err := Fields(&b, [][2]string{{"Name", "x"}, {"Longer key", ""}}); err != nil {
		t.Fatal(err)
	}
	if want := "Name:       x\nLonger key: -\n"; b.String() != want {
		t.Errorf("got %q, want %q", b.String(), want)
	}
}
