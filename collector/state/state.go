/*
Copyright 2026 The telemetry-operator Authors.

Licensed under the Apache License, Version 2.0.
*/

// Package state persists the collector's progress: in its state ConfigMap when running in a
// cluster (the only object its Role lets it write), or in a file for local runs.
package state

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"

	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"

	"github.com/sourcegraph/telemetry-operator/internal/collectorconfig"
)

// Store loads and saves progress.
type Store interface {
	// Load returns the saved progress, or nil when there is none.
	Load(ctx context.Context) (*collectorconfig.Progress, error)
	Save(ctx context.Context, p *collectorconfig.Progress) error
}

// maxSize bounds what Load parses.
const maxSize = 16 << 10

func decode(raw []byte) (*collectorconfig.Progress, error) {
	if len(raw) == 0 || string(raw) == "{}" {
		return nil, nil
	}
	if len(raw) > maxSize {
		return nil, fmt.Errorf("saved progress is larger than %d bytes", maxSize)
	}
	var p collectorconfig.Progress
	if err := json.Unmarshal(raw, &p); err != nil {
		return nil, fmt.Errorf("saved progress is not valid: %w", err)
	}
	if p.Cursor < 0 {
		return nil, errors.New("saved progress has a negative cursor")
	}
	return &p, nil
}

// File stores progress in a file, replaced atomically.
type File struct{ Path string }

// Load implements Store.
func (f File) Load(context.Context) (*collectorconfig.Progress, error) {
	raw, err := os.ReadFile(f.Path)
	if errors.Is(err, os.ErrNotExist) {
		return nil, nil
	}
	if err != nil {
		return nil, err
	}
	return decode(raw)
}

// Save implements Store.
func (f File) Save(_ context.Context, p *collectorconfig.Progress) error {
	raw, err := json.Marshal(p)
	if err != nil {
		return err
	}
	tmp := filepath.Join(filepath.Dir(f.Path), "."+filepath.Base(f.Path)+".tmp")
	if err := os.WriteFile(tmp, raw, 0o600); err != nil {
		return err
	}
	return os.Rename(tmp, f.Path)
}

// ConfigMap stores progress in the collector's state ConfigMap, which the operator created.
type ConfigMap struct {
	Client    kubernetes.Interface
	Namespace string
	Name      string
}

// Load implements Store.
func (c ConfigMap) Load(ctx context.Context) (*collectorconfig.Progress, error) {
	cm, err := c.Client.CoreV1().ConfigMaps(c.Namespace).Get(ctx, c.Name, metav1.GetOptions{})
	if apierrors.IsNotFound(err) {
		return nil, nil
	}
	if err != nil {
		return nil, fmt.Errorf("reading state ConfigMap %s/%s: %w", c.Namespace, c.Name, err)
	}
	return decode([]byte(cm.Data[collectorconfig.ProgressKey]))
}

// Save implements Store. It retries once on a conflict with a fresh read.
func (c ConfigMap) Save(ctx context.Context, p *collectorconfig.Progress) error {
	raw, err := json.Marshal(p)
	if err != nil {
		return err
	}
	for attempt := 0; ; attempt++ {
		cm, err := c.Client.CoreV1().ConfigMaps(c.Namespace).Get(ctx, c.Name, metav1.GetOptions{})
		if err != nil {
			return fmt.Errorf("reading state ConfigMap %s/%s: %w", c.Namespace, c.Name, err)
		}
		if cm.Data == nil {
			cm.Data = map[string]string{}
		}
		cm.Data[collectorconfig.ProgressKey] = string(raw)
		_, err = c.Client.CoreV1().ConfigMaps(c.Namespace).Update(ctx, cm, metav1.UpdateOptions{})
		if err == nil || !apierrors.IsConflict(err) || attempt > 2 {
			return err
		}
	}
}
