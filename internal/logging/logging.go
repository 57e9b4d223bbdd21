// Package logging owns the operator's logger policy: whatever verbosity a
// user asks for, nothing above MaxVerbosity is written, because client-go
// logs request and response bodies (Secrets with their private keys among
// them) from V(7) on, through the logger in the request's context.
package logging

import "github.com/go-logr/logr"

// MaxVerbosity is the highest V-level that is written. client-go logs URLs
// and status codes at V(6), headers at V(7) and bodies at V(8).
const MaxVerbosity = 6

// Cap returns l with every message above MaxVerbosity dropped.
func Cap(l logr.Logger) logr.Logger {
	if l.GetSink() == nil {
		return l
	}
	return logr.New(&capSink{LogSink: l.GetSink()})
}

type capSink struct {
	logr.LogSink
}

func (s *capSink) Enabled(level int) bool {
	return level <= MaxVerbosity && s.LogSink.Enabled(level)
}

func (s *capSink) Info(level int, msg string, kv ...any) {
	if level > MaxVerbosity {
		return
	}
	s.LogSink.Info(level, msg, kv...)
}

func (s *capSink) WithValues(kv ...any) logr.LogSink {
	return &capSink{LogSink: s.LogSink.WithValues(kv...)}
}

func (s *capSink) WithName(name string) logr.LogSink {
	return &capSink{LogSink: s.LogSink.WithName(name)}
}

// WithCallDepth keeps caller information right when the sink supports it.
func (s *capSink) WithCallDepth(depth int) logr.LogSink {
	if d, ok := s.LogSink.(logr.CallDepthLogSink); ok {
		return &capSink{LogSink: d.WithCallDepth(depth)}
	}
	return s
}
