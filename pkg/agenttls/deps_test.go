package agenttls_test

import (
	"go/parser"
	"go/token"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
)

// TestNoKubernetesImports keeps the SDK light: agents must not pull the
// operator's internal packages or Kubernetes libraries (tests may).
func TestNoKubernetesImports(t *testing.T) {
	files, err := filepath.Glob("*.go")
	if err != nil {
		t.Fatal(err)
	}
	more, err := filepath.Glob("agenttlstest/*.go")
	if err != nil {
		t.Fatal(err)
	}
	checked := 0
	for _, f := range append(files, more...) {
		if strings.HasSuffix(f, "_test.go") {
			continue
		}
		ast, err := parser.ParseFile(token.NewFileSet(), f, nil, parser.ImportsOnly)
		if err != nil {
			t.Fatal(err)
		}
		for _, imp := range ast.Imports {
			path, err := strconv.Unquote(imp.Path.Value)
			if err != nil {
				t.Fatal(err)
			}
			if strings.Contains(path, "k8s.io") || strings.HasPrefix(path, "github.com/agentmesh/agentmesh/internal") ||
				strings.HasPrefix(path, "github.com/agentmesh/agentmesh/api") {
				t.Errorf("%s imports %s", f, path)
			}
		}
		checked++
	}
	if checked < 10 {
		t.Errorf("checked only %d files", checked)
	}
}
