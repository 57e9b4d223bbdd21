package agenttls

import (
	"context"
	"time"

	"github.com/fsnotify/fsnotify"
)

// start launches the goroutine that follows the files: file system events
// on their directories (the kubelet's ..data swap shows up as a create of
// ..data), and a poll as a fallback.
func (s *Source) start(ctx context.Context) {
	var w *fsnotify.Watcher
	if !s.cfg.noFSNotify {
		var err error
		w, err = s.newWatcher()
		if err != nil {
			s.cfg.log.Warn("agentmesh: cannot watch the identity files, polling only",
				"error", err.Error(), "pollInterval", s.cfg.poll.String())
			w = nil
		}
	}
	s.wg.Add(1)
	go func() {
		defer s.wg.Done()
		s.run(ctx, w)
	}()
}

func (s *Source) newWatcher() (*fsnotify.Watcher, error) {
	w, err := fsnotify.NewWatcher()
	if err != nil {
		return nil, err
	}
	for _, d := range s.cfg.files.dirs() {
		if err := w.Add(d); err != nil {
			_ = w.Close()
			return nil, err
		}
	}
	return w, nil
}

func (s *Source) run(ctx context.Context, w *fsnotify.Watcher) {
	var (
		events <-chan fsnotify.Event
		errs   <-chan error
		tick   <-chan time.Time
		fire   <-chan time.Time
	)
	if w != nil {
		defer w.Close()
		events, errs = w.Events, w.Errors
	}
	if s.cfg.poll > 0 {
		t := time.NewTicker(s.cfg.poll)
		defer t.Stop()
		tick = t.C
	}
	for {
		select {
		case <-ctx.Done():
			return
		case ev, ok := <-events:
			if !ok {
				events = nil
				continue
			}
			// A chmod says nothing about content; anything else may be
			// (part of) an update: reload once the burst is over.
			if ev.Op != fsnotify.Chmod && fire == nil {
				fire = time.After(debounceDelay)
			}
		case err, ok := <-errs:
			if !ok {
				errs = nil
				continue
			}
			s.cfg.log.Warn("agentmesh: file watch error, polling continues", "error", err.Error())
		case <-fire:
			fire = nil
			s.reload()
		case <-tick:
			s.reload()
		}
	}
}
