package logging

import (
	"bytes"
	"strings"
	"testing"

	"go.uber.org/zap/zapcore"
	"sigs.k8s.io/controller-runtime/pkg/log/zap"
)

func TestCapDropsVerboseMessages(t *testing.T) {
	var buf bytes.Buffer
	l := Cap(zap.New(zap.WriteTo(&buf), zap.Level(zapcore.Level(-127))))
	l.V(6).Info("six")
	l.V(7).Info("seven: headers")
	l.WithName("rest").WithValues("k", "v").V(8).Info("Response Body", "body", "-----BEGIN PRIVATE KEY-----")
	l.Info("zero")
	out := buf.String()
	for _, want := range []string{`"msg":"six"`, `"msg":"zero"`} {
		if !strings.Contains(out, want) {
			t.Errorf("missing %s in %s", want, out)
		}
	}
	for _, not := range []string{"seven", "Response Body", "PRIVATE KEY"} {
		if strings.Contains(out, not) {
			t.Errorf("%q was logged: %s", not, out)
		}
	}
	if l.V(7).Enabled() || !l.V(6).Enabled() {
		t.Error("Enabled does not follow the cap")
	}
}
