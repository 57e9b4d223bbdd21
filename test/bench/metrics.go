package main

import (
	"bufio"
	"bytes"
	"context"
	"fmt"
	"io"
	"math"
	"net/http"
	"net/url"
	"sort"
	"strconv"
	"strings"
)

// sample is one line of the Prometheus text format.
type sample struct {
	name   string
	labels map[string]string
	value  float64
}

// samples is a scrape.
type samples []sample

// parseProm parses the Prometheus text exposition format (what the
// manager's and the API server's /metrics serve). Comments and malformed
// lines are skipped.
func parseProm(b []byte) samples {
	var out samples
	sc := bufio.NewScanner(bytes.NewReader(b))
	sc.Buffer(make([]byte, 1<<20), 1<<20)
	for sc.Scan() {
		line := sc.Text()
		if line == "" || line[0] == '#' {
			continue
		}
		s, ok := parseLine(line)
		if ok {
			out = append(out, s)
		}
	}
	return out
}

func parseLine(line string) (sample, bool) {
	s := sample{labels: map[string]string{}}
	i := strings.IndexAny(line, "{ ")
	if i < 0 {
		return s, false
	}
	s.name = line[:i]
	rest := line[i:]
	if rest[0] == '{' {
		rest = rest[1:]
		for {
			rest = strings.TrimLeft(rest, ", ")
			if rest == "" {
				return s, false
			}
			if rest[0] == '}' {
				rest = rest[1:]
				break
			}
			eq := strings.IndexByte(rest, '=')
			if eq < 0 || eq+1 >= len(rest) || rest[eq+1] != '"' {
				return s, false
			}
			key := rest[:eq]
			rest = rest[eq+2:]
			var val strings.Builder
			j := 0
			for ; j < len(rest); j++ {
				c := rest[j]
				if c == '\\' && j+1 < len(rest) {
					j++
					switch rest[j] {
					case 'n':
						val.WriteByte('\n')
					default:
						val.WriteByte(rest[j])
					}
					continue
				}
				if c == '"' {
					break
				}
				val.WriteByte(c)
			}
			if j >= len(rest) {
				return s, false
			}
			s.labels[key] = val.String()
			rest = rest[j+1:]
		}
	}
	fields := strings.Fields(rest)
	if len(fields) == 0 {
		return s, false
	}
	v, err := strconv.ParseFloat(fields[0], 64)
	if err != nil {
		return s, false
	}
	s.value = v
	return s, true
}

// matches reports whether every label of want has that value in s.
func (s sample) matches(want map[string]string) bool {
	for k, v := range want {
		if s.labels[k] != v {
			return false
		}
	}
	return true
}

// sum adds up the samples of a metric whose labels include want.
func (ss samples) sum(name string, want map[string]string) float64 {
	var t float64
	for _, s := range ss {
		if s.name == name && s.matches(want) {
			t += s.value
		}
	}
	return t
}

// sumBy adds up the samples of a metric by the value of one label.
func (ss samples) sumBy(name, label string, want map[string]string) map[string]float64 {
	out := map[string]float64{}
	for _, s := range ss {
		if s.name == name && s.matches(want) {
			out[s.labels[label]] += s.value
		}
	}
	return out
}

// quantileEstimate is a quantile of a histogram's observations.
type quantileEstimate struct {
	// Value is interpolated linearly inside its bucket, the way PromQL's
	// histogram_quantile does; Bound is that bucket's upper bound (the
	// quantile is at most Bound). Both are NaN without observations.
	Value, Bound float64
	// Count is the number of observations.
	Count float64
}

// histogramQuantile estimates the q-quantile of the observations a
// histogram received between two scrapes.
func histogramQuantile(before, after samples, name string, want map[string]string, q float64) quantileEstimate {
	none := quantileEstimate{Value: math.NaN(), Bound: math.NaN()}
	counts := map[float64]float64{}
	add := func(ss samples, sign float64) {
		for _, s := range ss {
			if s.name != name+"_bucket" || !s.matches(want) {
				continue
			}
			le, err := strconv.ParseFloat(s.labels["le"], 64)
			if err != nil {
				continue
			}
			counts[le] += sign * s.value
		}
	}
	add(after, 1)
	add(before, -1)
	bounds := make([]float64, 0, len(counts))
	for b := range counts {
		bounds = append(bounds, b)
	}
	sort.Float64s(bounds)
	if len(bounds) == 0 {
		return none
	}
	total := counts[bounds[len(bounds)-1]]
	if total <= 0 {
		return none
	}
	rank := q * total
	prevBound, prevCount := 0.0, 0.0
	for _, b := range bounds {
		c := counts[b]
		if c >= rank {
			switch {
			case math.IsInf(b, 1):
				// Beyond the last finite bucket: its bound is all we know.
				return quantileEstimate{Value: prevBound, Bound: b, Count: total}
			case c == prevCount:
				return quantileEstimate{Value: b, Bound: b, Count: total}
			}
			return quantileEstimate{Value: prevBound + (b-prevBound)*(rank-prevCount)/(c-prevCount), Bound: b, Count: total}
		}
		prevBound, prevCount = b, c
	}
	return quantileEstimate{Value: prevBound, Bound: prevBound, Count: total}
}

// scrapeHTTP reads a /metrics endpoint over plain HTTP, optionally keeping
// only the named metric families (the name[] filter of client_golang's
// handler, which keeps polls cheap to transfer).
func scrapeHTTP(ctx context.Context, addr string, names ...string) (samples, error) {
	u := "http://" + addr + "/metrics"
	if len(names) > 0 {
		v := url.Values{}
		for _, n := range names {
			v.Add("name[]", n)
		}
		u += "?" + v.Encode()
	}
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, u, http.NoBody)
	if err != nil {
		return nil, err
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return nil, err
	}
	defer func() { _ = resp.Body.Close() }()
	if resp.StatusCode != http.StatusOK {
		return nil, fmt.Errorf("GET %s: %s", u, resp.Status)
	}
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		return nil, err
	}
	return parseProm(b), nil
}

// histStats summarises what a histogram observed between two scrapes.
type histStats struct {
	Count, Sum float64
	P50, P99   quantileEstimate
}

func (h histStats) mean() float64 { return h.Sum / h.Count }

func histogramStats(before, after samples, name string, want map[string]string) histStats {
	return histStats{
		Count: after.sum(name+"_count", want) - before.sum(name+"_count", want),
		Sum:   after.sum(name+"_sum", want) - before.sum(name+"_sum", want),
		P50:   histogramQuantile(before, after, name, want, 0.5),
		P99:   histogramQuantile(before, after, name, want, 0.99),
	}
}

// labelValues lists the values a label takes in a metric.
func (ss samples) labelValues(name, label string) []string {
	seen := map[string]bool{}
	var out []string
	for _, s := range ss {
		if s.name == name && !seen[s.labels[label]] {
			seen[s.labels[label]] = true
			out = append(out, s.labels[label])
		}
	}
	sort.Strings(out)
	return out
}
