/*
Copyright 2026 The telemetry-operator Authors.

Licensed under the Apache License, Version 2.0.
*/

// Package allowed holds the manager's lists of collector images and export endpoints a policy
// may name. A policy is written by a namespace's consent admin, but the collector it asks for
// runs with the fleet certificate and the instance's pseudonym key: which code runs with them,
// and where it may send, is the fleet operator's decision, not the tenant's.
package allowed

import (
	"fmt"
	"net"
	"net/url"
	"slices"
	"strings"
)

// Images are the collector images policies may name, by repository.
type Images struct {
	repos    []string // exact repositories
	prefixes []string // repository prefixes (entries ending in "/")
}

// ParseImages reads entries that are repositories ("ghcr.io/acme/telemetry-collector") or
// registry paths ending in "/" ("ghcr.io/acme/"), allowing any tag or digest of them.
func ParseImages(entries []string) (Images, error) {
	var im Images
	for _, e := range entries {
		e = strings.TrimSpace(e)
		switch {
		case e == "":
			continue
		case strings.ContainsAny(e, " @") || strings.Contains(e, "://"):
			return Images{}, fmt.Errorf("allowed image %q must be a repository (registry/path/name) or a registry path ending in /", e)
		case strings.HasSuffix(e, "/"):
			im.prefixes = append(im.prefixes, e)
		default:
			im.repos = append(im.repos, Repository(e))
		}
	}
	return im, nil
}

// Repository returns an image reference without its tag and digest.
func Repository(image string) string {
	if i := strings.IndexByte(image, '@'); i >= 0 {
		image = image[:i]
	}
	if i := strings.LastIndexByte(image, ':'); i > strings.LastIndexByte(image, '/') {
		image = image[:i]
	}
	return image
}

// Allows reports whether image is on the list.
func (im Images) Allows(image string) bool {
	repo := Repository(image)
	if repo == "" || strings.Contains(repo, "..") {
		return false
	}
	if slices.Contains(im.repos, repo) {
		return true
	}
	for _, p := range im.prefixes {
		if strings.HasPrefix(repo, p) {
			return true
		}
	}
	return false
}

// Endpoints are the receivers policies may export to, by origin.
type Endpoints struct {
	origins []string // scheme://host:port, lowercase
}

// ParseEndpoints reads https:// URLs; only their origin (host and port) counts.
func ParseEndpoints(entries []string) (Endpoints, error) {
	var ep Endpoints
	for _, e := range entries {
		e = strings.TrimSpace(e)
		if e == "" {
			continue
		}
		o, err := origin(e)
		if err != nil {
			return Endpoints{}, fmt.Errorf("allowed endpoint %q: %w", e, err)
		}
		ep.origins = append(ep.origins, o)
	}
	return ep, nil
}

// Allows reports whether endpoint's origin is on the list.
func (ep Endpoints) Allows(endpoint string) bool {
	o, err := origin(endpoint)
	return err == nil && slices.Contains(ep.origins, o)
}

// WellFormedEndpoint reports whether endpoint parses as an https:// URL with a host (whether or
// not it is allowed: one with credentials is well-formed and never allowed).
func WellFormedEndpoint(endpoint string) bool {
	u, err := url.Parse(endpoint)
	return err == nil && u.Scheme == "https" && u.Host != ""
}

// String lists the origins, for messages.
func (ep Endpoints) String() string { return strings.Join(ep.origins, ", ") }

func origin(raw string) (string, error) {
	u, err := url.Parse(raw)
	if err != nil || u.Scheme != "https" || u.Host == "" || u.User != nil {
		return "", fmt.Errorf("must be an https:// URL without credentials")
	}
	host, port := strings.ToLower(u.Hostname()), u.Port()
	if port == "" {
		port = "443"
	}
	return "https://" + net.JoinHostPort(host, port), nil
}
