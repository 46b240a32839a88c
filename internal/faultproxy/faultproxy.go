/*
Copyright 2026 The telemetry-operator Authors.

Licensed under the Apache License, Version 2.0.
*/

// Package faultproxy is a TCP proxy for fault tests: it forwards connections to a target and,
// as told, resets them, stalls them, or truncates them after some bytes.
package faultproxy

import (
	"io"
	"math/rand/v2"
	"net"
	"sync"
	"sync/atomic"
	"time"
)

// Mode is what the proxy does to new connections.
type Mode int32

// Modes.
const (
	Pass     Mode = iota // forward faithfully
	Reset                // accept, then close at once
	Stall                // accept and forward nothing for StallFor, then close
	Truncate             // forward a random prefix of the request, then close
	Random               // pick one of the above per connection (half of them Pass)
)

// Proxy forwards 127.0.0.1:port to Target.
type Proxy struct {
	Target   string
	StallFor time.Duration
	listener net.Listener
	mode     atomic.Int32
	faults   atomic.Int64
	wg       sync.WaitGroup
	mu       sync.Mutex
	conns    map[net.Conn]struct{}
}

// Start listens on a free loopback port.
func Start(target string) (*Proxy, error) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return nil, err
	}
	p := &Proxy{Target: target, StallFor: 2 * time.Second, listener: l, conns: map[net.Conn]struct{}{}}
	p.wg.Add(1)
	go p.serve()
	return p, nil
}

// Addr is the proxy's address.
func (p *Proxy) Addr() string { return p.listener.Addr().String() }

// SetMode changes what happens to new connections; Pass also leaves existing ones alone.
func (p *Proxy) SetMode(m Mode) { p.mode.Store(int32(m)) }

// Faults counts connections that were faulted.
func (p *Proxy) Faults() int64 { return p.faults.Load() }

// Close stops the proxy and cuts every connection.
func (p *Proxy) Close() {
	_ = p.listener.Close()
	p.mu.Lock()
	for c := range p.conns {
		_ = c.Close()
	}
	p.mu.Unlock()
	p.wg.Wait()
}

func (p *Proxy) track(c net.Conn, add bool) {
	p.mu.Lock()
	defer p.mu.Unlock()
	if add {
		p.conns[c] = struct{}{}
	} else {
		delete(p.conns, c)
	}
}

func (p *Proxy) serve() {
	defer p.wg.Done()
	for {
		c, err := p.listener.Accept()
		if err != nil {
			return
		}
		p.wg.Add(1)
		go func() {
			defer p.wg.Done()
			p.handle(c)
		}()
	}
}

func (p *Proxy) handle(client net.Conn) {
	p.track(client, true)
	defer p.track(client, false)
	defer func() { _ = client.Close() }()
	mode := Mode(p.mode.Load())
	random := mode == Random
	if random {
		mode = []Mode{Pass, Pass, Pass, Reset, Stall, Truncate}[rand.IntN(6)] //nolint:gosec // fault choice
	}
	switch mode {
	case Reset:
		p.faults.Add(1)
		if tc, ok := client.(*net.TCPConn); ok {
			_ = tc.SetLinger(0) // RST, not FIN
		}
		return
	case Stall:
		p.faults.Add(1)
		time.Sleep(p.StallFor)
		return
	}
	server, err := net.DialTimeout("tcp", p.Target, 5*time.Second)
	if err != nil {
		return
	}
	p.track(server, true)
	defer p.track(server, false)
	defer func() { _ = server.Close() }()
	var upstream io.Reader = client
	if mode == Truncate {
		p.faults.Add(1)
		upstream = io.LimitReader(client, int64(200+rand.IntN(4000))) //nolint:gosec // fault size
	}
	done := make(chan struct{}, 2)
	go func() { _, _ = io.Copy(server, upstream); _ = server.Close(); done <- struct{}{} }()
	go func() { _, _ = io.Copy(client, server); _ = client.Close(); done <- struct{}{} }()
	if random && mode == Pass {
		// Long-lived (keep-alive) connections are cut at a random moment too, possibly mid-request.
		select {
		case <-done:
		case <-time.After(time.Duration(20+rand.IntN(300)) * time.Millisecond): //nolint:gosec // fault timing
			if Mode(p.mode.Load()) == Random {
				p.faults.Add(1)
				_ = client.Close()
				_ = server.Close()
			}
			<-done
		}
		return
	}
	<-done
}
