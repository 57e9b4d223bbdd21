package webhook

import (
	"fmt"
	"net/http"
	"time"
)

// Limits of every admission request.
const (
	// MaxRequestBody caps an AdmissionReview: the API server stores objects
	// of at most 1.5 MiB, so 3 MiB leaves room for the old object of an
	// update and the review's envelope.
	MaxRequestBody = 3 << 20
	// ReadTimeout bounds the time to read a request's body.
	ReadTimeout = 10 * time.Second
)

// Guard refuses bodies over maxBody with 413 and gives up reading a body
// after readTimeout, before h sees the request.
func Guard(h http.Handler, maxBody int64, readTimeout time.Duration) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.ContentLength > maxBody {
			http.Error(w, fmt.Sprintf("request body of %d bytes is over the limit of %d", r.ContentLength, maxBody), http.StatusRequestEntityTooLarge)
			return
		}
		_ = http.NewResponseController(w).SetReadDeadline(time.Now().Add(readTimeout))
		r.Body = http.MaxBytesReader(w, r.Body, maxBody)
		h.ServeHTTP(w, r)
	})
}
