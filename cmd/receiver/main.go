/*
Copyright 2026 The telemetry-operator Authors.

Licensed under the Apache License, Version 2.0.
*/

// Command receiver is the central ingestion service and its report:
//
//	receiver serve   --tls-cert F --tls-key F --client-ca F   (mutual-TLS ingestion API)
//	receiver report  [--instance ID] [--format table|json]   (the product answers)
//	receiver migrate [--serve-dsn-file F]                    (apply schema migrations; grant serve's login its roles)
//	receiver consent show --instance ID [--format table|json] (an instance's consent ledger)
//	receiver consent release --instance ID --to CLUSTER/NAMESPACE|--to-anyone (hand a record over: admin override)
//	receiver consent reserve --instance ID --to CLUSTER/NAMESPACE (assign a new instance to its namespace)
//	receiver consent reservations [--required=true|false]    (whether every new instance needs one)
//	receiver erasures [--instance ID [--request TICKET]] [--format table|json]  (the erasure audit trail)
//	receiver exported --instance ID [--limit N] [--format table|json] (what an instance exported)
//
// The database DSN comes from $RECEIVER_DATABASE_DSN or --database-dsn-file, never a flag
// value, so it does not show in process listings.
package main

import (
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"os"
	"os/signal"
	"os/user"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"text/tabwriter"
	"time"
	"unicode"

	"github.com/jackc/pgx/v5"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"

	consentv1 "github.com/sourcegraph/telemetry-operator/api/consent/v1"
	"github.com/sourcegraph/telemetry-operator/internal/memorylimit"
	"github.com/sourcegraph/telemetry-operator/internal/tlsreload"
	"github.com/sourcegraph/telemetry-operator/receiver/report"
	"github.com/sourcegraph/telemetry-operator/receiver/retention"
	"github.com/sourcegraph/telemetry-operator/receiver/server"
	"github.com/sourcegraph/telemetry-operator/receiver/store"
)

func main() {
	if len(os.Args) < 2 {
		usage()
	}
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGTERM, os.Interrupt)
	defer stop()
	var err error
	switch os.Args[1] {
	case "serve":
		err = serve(ctx, os.Args[2:])
	case "report":
		err = runReport(ctx, os.Args[2:])
	case "migrate":
		err = migrate(ctx, os.Args[2:])
	case "consent":
		err = consent(ctx, os.Args[2:])
	case "erasures":
		err = erasures(ctx, os.Args[2:])
	case "exported":
		err = exported(ctx, os.Args[2:])
	default:
		usage()
	}
	if err != nil {
		fmt.Fprintln(os.Stderr, "receiver:", err)
		os.Exit(1)
	}
}

func usage() {
	fmt.Fprintln(os.Stderr, "usage: receiver serve|report|migrate|consent show|release|reserve|reservations|erasures|exported [flags]   (receiver <command> -h for flags)")
	os.Exit(2)
}

func dsnFlag(fs *flag.FlagSet) *string {
	return fs.String("database-dsn-file", "", "File holding the PostgreSQL DSN (default: $RECEIVER_DATABASE_DSN).")
}

func openStore(ctx context.Context, dsnFile string, opts ...store.Option) (*store.Store, error) {
	return openStoreAs(ctx, dsnFile, store.RoleIngest, opts...)
}

// openStoreAs opens the store writing as role (the receiver's: RoleIngest; its administrators'
// tools: RoleConsentAdmin), reading stored data as the raw reader.
func openStoreAs(ctx context.Context, dsnFile, role string, opts ...store.Option) (*store.Store, error) {
	dsn, err := readDSN(dsnFile)
	if err != nil {
		return nil, err
	}
	return store.Open(ctx, dsn, append(opts, store.WithRoles(role, store.RoleRawReader))...)
}

// readDSN reads the DSN from dsnFile, else from $RECEIVER_DATABASE_DSN.
func readDSN(dsnFile string) (string, error) {
	dsn := os.Getenv("RECEIVER_DATABASE_DSN")
	if dsnFile != "" {
		raw, err := os.ReadFile(dsnFile) //nolint:gosec // operator-provided path
		if err != nil {
			return "", fmt.Errorf("reading the DSN file: %w", err)
		}
		dsn = strings.TrimSpace(string(raw))
	}
	if dsn == "" {
		return "", errors.New("no database: set RECEIVER_DATABASE_DSN or --database-dsn-file")
	}
	return dsn, nil
}

// DefaultRetentionDays keeps thirteen months of events: a year-over-year comparison still has
// its base.
const DefaultRetentionDays = 395

func serve(ctx context.Context, args []string) error {
	fs := flag.NewFlagSet("serve", flag.ExitOnError)
	listen := fs.String("listen", ":8443", "Address of the mutual-TLS ingestion API.")
	opsListen := fs.String("ops-listen", "127.0.0.1:9091", "Address of /healthz, /readyz and /metrics (plain HTTP, unauthenticated: loopback unless set, e.g. to the pod IP for a scraper).")
	certFile := fs.String("tls-cert", "", "Server certificate (PEM).")
	keyFile := fs.String("tls-key", "", "Server private key (PEM).")
	caFile := fs.String("client-ca", "", "Fleet issuer CA bundle (PEM) that signs collector client certificates.")
	maxBody := fs.Int64("max-body-bytes", server.DefaultLimits().MaxBodyBytes, "Largest request body as sent.")
	maxDecompressed := fs.Int64("max-decompressed-bytes", server.DefaultLimits().MaxDecompressedBytes, "Largest request body after decompression.")
	maxInFlight := fs.Int64("max-in-flight-bytes", server.DefaultLimits().MaxInFlightBytes, "Batch bodies held at once, as sent and decompressed; beyond it requests are answered 503 with Retry-After.")
	instanceRate := fs.Float64("instance-rate", server.DefaultLimits().InstanceRate, "Batch requests per second one instance may send (0: unlimited); beyond it 429 with Retry-After.")
	instanceBurst := fs.Int("instance-burst", server.DefaultLimits().InstanceBurst, "Batch requests one instance may send at once above its rate.")
	maxStreams := fs.Uint("max-streams", 16, "Concurrent HTTP/2 streams per connection.")
	statementTimeout := fs.Duration("statement-timeout", time.Minute, "Longest database statement; a longer one is cancelled and the request answered 503 (0: no limit).")
	requireReservations := fs.Bool("require-reservations", false, "At start, set the receiver-wide setting (kept in the database, so every replica enforces it) that lets a policy claim an instance with no consent record only once it was reserved for the policy's namespace (receiver consent reserve). Without the flag the setting is left as it is; receiver consent reservations --required=false turns it off.")
	retentionDays := fs.Int("retention-days", DefaultRetentionDays, "Whole UTC days before today that stored events are kept (at most 3650); older days are dropped hourly and events dated before them refused (0: drop nothing; events over 3650 days old are still refused). Give every replica the same value.")
	migrateFirst := fs.Bool("migrate", true, "Apply the schema's migrations at start (the login must own the schema and may create roles). With false, the receiver only checks that they were applied (receiver migrate, with the owner's DSN) and refuses to start otherwise: for a login that is a member of telemetry_ingest and telemetry_raw_reader only, which can neither migrate nor hand consent records over.")
	dsnFile := dsnFlag(fs)
	_ = fs.Parse(args)
	log := slog.New(slog.NewJSONHandler(os.Stderr, nil))
	memorylimit.Apply(log)

	// The server certificate and the client CA bundle are re-read for every handshake: a renewed
	// certificate, or an issuer rotated into the bundle (old and new roots side by side while
	// old client certificates live), takes effect without a restart; a root dropped from the
	// bundle is refused on each request, also over connections opened before.
	serverTLS, err := tlsreload.NewServer(*certFile, *keyFile, *caFile)
	if err != nil {
		return fmt.Errorf("loading --tls-cert, --tls-key and --client-ca: %w", err)
	}
	serverTLS.OnReload(func(serial string) { log.Info("loaded server certificate", "serial", serial) })
	if *retentionDays < 0 || *retentionDays > store.MaxRetentionDays {
		return fmt.Errorf("--retention-days %d: must be between 1 and %d, or 0 to drop nothing", *retentionDays, store.MaxRetentionDays)
	}
	st, err := openStore(ctx, *dsnFile, store.WithStatementTimeout(*statementTimeout), store.WithRetention(*retentionDays),
		store.WithApplicationName("receiver serve"))
	if err != nil {
		return err
	}
	defer st.Close()
	if err := schemaCurrent(ctx, st, *migrateFirst, log); err != nil {
		return err
	}
	if *requireReservations {
		if err := requireReservationsAtStart(ctx, st, *dsnFile); err != nil {
			return err
		}
	}
	if required, err := st.ReservationsRequired(ctx); err == nil {
		log.Info("consent ledger", "reservationsRequired", required)
	}
	reg := prometheus.NewRegistry()
	reg.MustRegister(collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	limits := server.DefaultLimits()
	limits.MaxBodyBytes, limits.MaxDecompressedBytes, limits.MaxInFlightBytes = *maxBody, *maxDecompressed, *maxInFlight
	limits.InstanceRate, limits.InstanceBurst = *instanceRate, *instanceBurst
	srv := server.New(st, limits, log, reg, server.WithTrustedRoots(serverTLS.Trusts))
	go retention.New(st, log, reg, nil, retention.DefaultEvery).
		RefreshRollups(func(ctx context.Context) (int64, error) { return report.RefreshRollups(ctx, st.Pool()) }).Run(ctx)
	// Slow clients are cut off: headers within 10 s, a whole body within 2 minutes.
	api := &http.Server{Addr: *listen, Handler: srv.Handler(), TLSConfig: serverTLS.TLSConfig(),
		ReadHeaderTimeout: 10 * time.Second, ReadTimeout: 2 * time.Minute, WriteTimeout: 2 * time.Minute, IdleTimeout: 2 * time.Minute,
		MaxHeaderBytes: 64 << 10, HTTP2: &http.HTTP2Config{MaxConcurrentStreams: int(min(*maxStreams, 1000))}} //nolint:gosec // bounded
	ops := &http.Server{Addr: *opsListen, Handler: srv.OpsHandler(reg), ReadHeaderTimeout: 5 * time.Second}
	errs := make(chan error, 2)
	go func() { errs <- api.ListenAndServeTLS("", "") }()
	go func() { errs <- ops.ListenAndServe() }()
	log.Info("receiver listening", "api", *listen, "ops", *opsListen)
	select {
	case <-ctx.Done():
	case err := <-errs:
		return err
	}
	shutdown, cancel := context.WithTimeout(context.Background(), 15*time.Second)
	defer cancel()
	_ = ops.Shutdown(shutdown)
	return api.Shutdown(shutdown)
}

func runReport(ctx context.Context, args []string) error {
	fs := flag.NewFlagSet("report", flag.ExitOnError)
	instance := fs.String("instance", "", "Report one instance (default: fleet-wide).")
	format := fs.String("format", "table", "Output format: table or json.")
	nowFlag := fs.String("now", "", "End of the report windows, RFC 3339 (default: now).")
	powerDays := fs.Int("power-user-days", 10, "A power user is active on at least this many of the last 28 days.")
	limit := fs.Int("limit", 20, "Rows per table in table output.")
	dsnFile := dsnFlag(fs)
	_ = fs.Parse(args)
	o := report.Options{Instance: *instance, PowerUserDays: *powerDays}
	if *nowFlag != "" {
		t, err := time.Parse(time.RFC3339, *nowFlag)
		if err != nil {
			return fmt.Errorf("--now: %w", err)
		}
		o.Now = t
	}
	// The report reads as the reporting role: aggregated and normalized views, never the tables.
	dsn, err := readDSN(*dsnFile)
	if err != nil {
		return err
	}
	pool, err := store.OpenPool(ctx, dsn, store.RoleReporting)
	if err != nil {
		return err
	}
	defer pool.Close()
	r, err := report.Build(ctx, pool, o)
	if err != nil {
		return err
	}
	switch *format {
	case "json":
		return r.WriteJSON(os.Stdout)
	case "table":
		return r.WriteText(os.Stdout, *limit)
	default:
		return fmt.Errorf("--format must be table or json, not %q", *format)
	}
}

// schemaCurrent applies the migrations (migrate) or checks that they were applied, retrying
// while the database is not ready.
func schemaCurrent(ctx context.Context, st *store.Store, migrate bool, log *slog.Logger) error {
	var err error
	for attempt := 0; ; attempt++ {
		if migrate {
			err = st.Migrate(ctx)
		} else {
			var pending []int
			if pending, err = st.PendingMigrations(ctx); err == nil && len(pending) > 0 {
				return fmt.Errorf("the database lacks migrations %v: run receiver migrate with the schema owner's DSN first (serve --migrate=false only checks)", pending)
			}
		}
		// A migration may fail for a moment (a deadlock with a starting replica): retry it; a
		// check fails for good unless the database is not ready.
		if err == nil || (!migrate && !errors.Is(err, store.ErrUnavailable)) || attempt >= 30 || ctx.Err() != nil {
			break
		}
		log.Warn("database not ready; retrying", "err", err)
		time.Sleep(2 * time.Second)
	}
	if err != nil && migrate {
		return fmt.Errorf("migrating: %w", err)
	}
	if err != nil {
		return fmt.Errorf("checking the schema's migrations (receiver migrate, with the schema owner's DSN, applies them): %w", err)
	}
	return nil
}

// requireReservationsAtStart turns the receiver-wide setting on unless it is on already. That is
// an administrator's change: it is made as store.RoleConsentAdmin, which a login of the
// receiver's roles only may not take.
func requireReservationsAtStart(ctx context.Context, st *store.Store, dsnFile string) error {
	if on, err := st.ReservationsRequired(ctx); err == nil && on {
		return nil // set only when off: setting it waits for the claims in flight (a table lock)
	}
	admin, err := openStoreAs(ctx, dsnFile, store.RoleConsentAdmin, store.WithApplicationName("receiver serve --require-reservations"))
	if err != nil {
		return err
	}
	defer admin.Close()
	if err := admin.SetReservationsRequired(ctx, true); err != nil {
		return fmt.Errorf("--require-reservations: reservations are off and this login may not turn them on (only the receiver's administrators, database role %s: receiver consent reservations --required=true with their DSN): %w",
			store.RoleConsentAdmin, err)
	}
	return nil
}

func migrate(ctx context.Context, args []string) error {
	fs := flag.NewFlagSet("migrate", flag.ExitOnError)
	dsnFile := dsnFlag(fs)
	serveDSNFile := fs.String("serve-dsn-file", "", "File holding the DSN `receiver serve` uses (its own login, apart from the schema owner's that migrates): after migrating, its user is made a member of telemetry_ingest and telemetry_raw_reader; a login that could hand consent records over or rewrite the ledger whatever its roles (a superuser, CREATEROLE, a member of telemetry_consent_admin, of the schema owner or of pg_write_all_data, an owner of the database, the schema or its tables) is refused and granted nothing. Only the user name is read from it.")
	_ = fs.Parse(args)
	st, err := openStore(ctx, *dsnFile)
	if err != nil {
		return err
	}
	defer st.Close()
	log := slog.New(slog.NewJSONHandler(os.Stderr, nil))
	for attempt := 0; ; attempt++ { // an init container may start before the database answers
		if err = st.Migrate(ctx); err == nil || !errors.Is(err, store.ErrUnavailable) || attempt >= 30 || ctx.Err() != nil {
			break
		}
		log.Warn("database not ready; retrying migrations", "err", err)
		time.Sleep(2 * time.Second)
	}
	if err != nil || *serveDSNFile == "" {
		return err
	}
	serveDSN, err := readDSN(*serveDSNFile)
	if err != nil {
		return err
	}
	cfg, err := pgx.ParseConfig(serveDSN)
	if err != nil {
		return errors.New("--serve-dsn-file: invalid database DSN") // never echo the DSN
	}
	isOwner, err := st.GrantReceiverRoles(ctx, cfg.User)
	if isOwner {
		log.Warn("the receiver serves with the schema owner's login: its roles bound its queries, not its credentials, which could hand consent records over; give it a plain login of its own (README, The receiver)")
	}
	return err
}

func consent(ctx context.Context, args []string) error {
	verbs := map[string][]string{ // the flags each verb takes
		"show":         {"instance", "format", "database-dsn-file"},
		"release":      {"instance", "to", "to-anyone", "database-dsn-file"},
		"reserve":      {"instance", "to", "database-dsn-file"},
		"reservations": {"required", "database-dsn-file"},
	}
	if len(args) < 1 || verbs[args[0]] == nil {
		return errors.New("usage: receiver consent show|release|reserve --instance ID, or receiver consent reservations [--required=true|false]")
	}
	fs := flag.NewFlagSet("consent "+args[0], flag.ExitOnError)
	instance := fs.String("instance", "", "The instance (required).")
	format := fs.String("format", "table", "Output format of show: table or json.")
	to := fs.String("to", "", "release and reserve: CLUSTER/NAMESPACE of the policy that may claim the record next (release: required, or --to-anyone; reserve: required).")
	toAnyone := fs.Bool("to-anyone", false, "release only: let the next policy anywhere claim the record (another namespace naming the instance may race the intended one).")
	required := fs.String("required", "", "reservations only: true or false, for every receiver on the database (default: show the setting).")
	dsnFile := dsnFlag(fs)
	_ = fs.Parse(args[1:])
	var misplaced []string
	fs.Visit(func(f *flag.Flag) {
		if !slices.Contains(verbs[args[0]], f.Name) {
			misplaced = append(misplaced, "--"+f.Name)
		}
	})
	if len(misplaced) > 0 || fs.NArg() > 0 {
		return fmt.Errorf("consent %s does not take %s", args[0], strings.Join(append(misplaced, fs.Args()...), " "))
	}
	if args[0] == "reservations" {
		return reservations(ctx, *dsnFile, *required)
	}
	if *instance == "" {
		return errors.New("--instance is required")
	}
	if *format != "table" && *format != "json" {
		return fmt.Errorf("--format must be table or json, not %q", *format)
	}
	if args[0] == "release" && (*to == "") == !*toAnyone {
		return errors.New("release needs --to CLUSTER/NAMESPACE (where the policy that takes the record over lives) or --to-anyone, not both")
	}
	if args[0] == "reserve" && (*to == "" || *toAnyone) {
		return errors.New("reserve needs --to CLUSTER/NAMESPACE (where the policy that may claim the instance lives)")
	}
	var target *consentv1.Owner
	if *to != "" {
		cluster, namespace, ok := strings.Cut(*to, "/")
		if !ok || cluster == "" || namespace == "" || strings.Contains(namespace, "/") {
			return fmt.Errorf("--to must be CLUSTER/NAMESPACE, not %q", *to)
		}
		target = &consentv1.Owner{Cluster: cluster, Namespace: namespace}
	}
	role := store.RoleIngest // show reads only
	if args[0] != "show" {
		role = store.RoleConsentAdmin
	}
	st, err := openStoreAs(ctx, *dsnFile, role, store.WithApplicationName(toolName("consent "+args[0])))
	if err != nil {
		return err
	}
	defer st.Close()
	if args[0] == "reserve" {
		if err := st.Reserve(ctx, *instance, *target); err != nil {
			return err
		}
		fmt.Printf("instance %s: reserved: only a policy of namespace %s in cluster %s may claim it\n", *instance, target.Namespace, target.Cluster)
		return nil
	}
	if args[0] == "release" {
		// The administrator's override for an owner that can no longer release the record
		// itself (its cluster is gone), and the handover to another namespace or cluster. The
		// timeline and the erasure audit stay.
		next := "the next policy to record a transition, from any namespace or cluster,"
		if target != nil {
			next = fmt.Sprintf("only a policy of namespace %s in cluster %s", target.Namespace, target.Cluster)
		}
		previous, err := st.ForceRelease(ctx, *instance, target)
		if err != nil {
			return err
		}
		switch {
		case previous.Cluster == "":
			fmt.Printf("instance %s: the consent record had no owner; %s claims it\n", *instance, next)
		case previous.Name == "":
			fmt.Printf("instance %s: handed over: the consent record was released by a policy of namespace %s in cluster %s; %s claims it\n",
				*instance, previous.Namespace, previous.Cluster, next)
		default:
			fmt.Printf("instance %s: released the consent record from policy %s/%s in cluster %s; %s claims it\n",
				*instance, previous.Namespace, previous.Name, previous.Cluster, next)
		}
		return nil
	}
	changes, err := st.OwnershipChanges(ctx, *instance)
	if err != nil {
		return err
	}
	state, err := st.ConsentState(ctx, *instance)
	// Deleted (an administrator's SQL, a restore): its trail outlives it.
	deleted := errors.Is(err, store.ErrUnknownInstance) && len(changes) > 0
	if err != nil && !deleted {
		return err
	}
	if *format == "json" {
		enc := json.NewEncoder(os.Stdout)
		enc.SetIndent("", "  ")
		if deleted {
			return enc.Encode(struct {
				InstanceID       string                  `json:"instanceID"`
				Deleted          bool                    `json:"deleted"`
				OwnershipChanges []store.OwnershipChange `json:"ownershipChanges"`
			}{*instance, true, changes})
		}
		return enc.Encode(struct {
			consentv1.State
			OwnershipChanges []store.OwnershipChange `json:"ownershipChanges"`
		}{state, changes})
	}
	if deleted {
		fmt.Printf("instance:  %s\nno record (deleted)\n", *instance)
		return writeOwnershipChanges(os.Stdout, changes)
	}
	if err := writeState(os.Stdout, state); err != nil {
		return err
	}
	return writeOwnershipChanges(os.Stdout, changes)
}

// toolName is the application_name of a receiver tool's connections: its command and who ran
// it, which the database records with each ownership change the command makes.
func toolName(command string) string {
	who := os.Getenv("USER")
	if u, err := user.Current(); err == nil {
		who = u.Username
	}
	return fmt.Sprintf("%s via receiver %s", who, command) // the user first: PostgreSQL keeps 63 bytes
}

// printable replaces control characters, which a value written by SQL may hold, so that
// nothing printed can drive the terminal.
func printable(s string) string {
	return strings.Map(func(r rune) rune {
		if unicode.IsControl(r) {
			return '?'
		}
		return r
	}, s)
}

// writeOwnershipChanges prints an instance's ownership changes, oldest first.
func writeOwnershipChanges(out io.Writer, changes []store.OwnershipChange) error {
	fmt.Fprintln(out, "\n== ownership changes (oldest first) ==")
	if len(changes) == 0 {
		fmt.Fprintln(out, "(none recorded: the record's changes before this release are not kept)")
		return nil
	}
	tw := tabwriter.NewWriter(out, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "AT\tCHANGE\tPOLICY\tNEXT CLAIM FROM\tBY")
	for _, c := range changes {
		policy, next := "-", "-"
		if o := c.Owner; o != nil {
			policy = fmt.Sprintf("%s/%s/%s", o.Cluster, o.Namespace, o.Name)
		}
		switch {
		case c.To != nil:
			next = c.To.Cluster + "/" + c.To.Namespace
		case c.Change == "release" || c.Change == "reserve":
			next = "anywhere"
		}
		by := printable(strings.TrimSpace(c.Application + " as " + c.DBUser)) // (what a client called itself)
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\n", rfc3339(c.At), c.Change, printable(policy), printable(next), by)
	}
	return tw.Flush()
}

// reservations shows or sets whether a policy may claim an instance nobody has recorded only
// once it was reserved for the policy's namespace.
func reservations(ctx context.Context, dsnFile, required string) error {
	role := store.RoleIngest // showing the setting reads only
	if required != "" {
		role = store.RoleConsentAdmin
	}
	st, err := openStoreAs(ctx, dsnFile, role, store.WithApplicationName(toolName("consent reservations")))
	if err != nil {
		return err
	}
	defer st.Close()
	var on bool
	if required != "" {
		if on, err = strconv.ParseBool(required); err != nil {
			return fmt.Errorf("--required must be true or false, not %q", required)
		}
		if err := st.SetReservationsRequired(ctx, on); err != nil {
			return err
		}
	} else if on, err = st.ReservationsRequired(ctx); err != nil {
		return err
	}
	if on {
		fmt.Println("reservations required: a policy claims an instance nobody has recorded only once it was reserved for its namespace (receiver consent reserve)")
		open, err := st.OpenRecords(ctx)
		if err != nil && required != "" { // the setting was applied: say so, and what failed after
			fmt.Fprintf(os.Stderr, "the records open to any namespace could not be listed: %v\n", err)
			return nil
		}
		if err != nil {
			return err
		}
		if len(open) > 0 {
			fmt.Printf("%d records nobody owns were released to any namespace before: only a policy of the namespace that last owned each may claim it "+
				"(records released before this release count the owner of their last transition or erasure); reserve one for another namespace with receiver consent reserve\n", len(open))
			for _, r := range open {
				if r.LastOwner == nil {
					fmt.Printf("  %s: never owned, claimable only once reserved\n", r.Instance)
					continue
				}
				fmt.Printf("  %s: last owned from %s/%s\n", r.Instance, r.LastOwner.Cluster, r.LastOwner.Namespace)
			}
		}
	} else {
		fmt.Println("reservations not required: the first policy to name an instance nobody has recorded claims it (reserve instances to keep other namespaces from it)")
	}
	return nil
}

func writeState(out io.Writer, s consentv1.State) error {
	owner := "(none: released)"
	if r := s.ReleasedBy; r != nil {
		owner = fmt.Sprintf("(none: released by a policy of namespace %s in cluster %s, or reserved for it; only a policy there may claim it, "+
			"until `receiver consent release` hands it over)", r.Namespace, r.Cluster)
	}
	if s.Owner.Cluster != "" {
		owner = fmt.Sprintf("policy %s/%s in cluster %s", s.Owner.Namespace, s.Owner.Name, s.Owner.Cluster)
		if s.Owner.UID != "" {
			owner += " (uid " + s.Owner.UID + ")"
		}
	}
	// (The tier in force now: a trial whose until has passed is CriticalOnly, recorded or not.)
	fmt.Fprintf(out, "instance:  %s\nowner:     %s\ncurrent:   %s\n\n== timeline (oldest first) ==\n", s.InstanceID, owner, s.Timeline.CurrentAt(time.Now()))
	tw := tabwriter.NewWriter(out, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "AT\tTIER\tUNTIL\tREASON\tBASIS\tRECORDED AT")
	for _, tr := range s.Timeline {
		recorded, until := "", "-"
		if tr.RecordedAt != nil {
			recorded = rfc3339(*tr.RecordedAt)
		}
		if tr.Until != nil {
			until = rfc3339(*tr.Until)
		}
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\t%s\n", rfc3339(tr.At), tr.Tier, until, dash(tr.Reason), dash(tr.Basis), recorded)
	}
	if err := tw.Flush(); err != nil {
		return err
	}
	if s.EventsRemoved > 0 {
		fmt.Fprintf(out, "the last transition removed %d stored events recorded after it\n", s.EventsRemoved)
	}
	fmt.Fprintln(out, "\n== erasures ==")
	records := make([]erasureRow, 0, len(s.Erasures))
	for _, e := range s.Erasures {
		records = append(records, erasureRow{s.InstanceID, e})
	}
	return writeErasures(out, records)
}

func erasures(ctx context.Context, args []string) error {
	fs := flag.NewFlagSet("erasures", flag.ExitOnError)
	instance := fs.String("instance", "", "One instance's erasures (default: every instance's).")
	request := fs.String("request", "", "With --instance: only the erasure requested with this id (spec.erasure.requestID). The receiver keeps a key computed from the id, never the id: REQUEST shows the key.")
	format := fs.String("format", "table", "Output format: table or json.")
	dsnFile := dsnFlag(fs)
	_ = fs.Parse(args)
	if *format != "table" && *format != "json" {
		return fmt.Errorf("--format must be table or json, not %q", *format)
	}
	if *request != "" && *instance == "" {
		return errors.New("--request needs --instance: a request's key is computed from both")
	}
	if *request != "" && !consentv1.ValidRequestID(*request) {
		return fmt.Errorf("--request %q is not a request id (1-128 letters, digits, '.', '_', ':' or '-')", *request)
	}
	st, err := openStore(ctx, *dsnFile)
	if err != nil {
		return err
	}
	defer st.Close()
	list, err := st.Erasures(ctx, *instance)
	if err != nil {
		return err
	}
	if *request != "" {
		key := consentv1.RequestKey(*instance, *request)
		list = slices.DeleteFunc(list, func(e store.ErasureRecord) bool { return e.RequestID != key })
		if len(list) == 0 {
			return fmt.Errorf("instance %s has no erasure requested with id %q (key %s)", *instance, *request, key)
		}
	}
	if *format == "json" {
		enc := json.NewEncoder(os.Stdout)
		enc.SetIndent("", "  ")
		if list == nil {
			return enc.Encode([]any{})
		}
		return enc.Encode(list)
	}
	rows := make([]erasureRow, 0, len(list))
	for _, e := range list {
		rows = append(rows, erasureRow{e.InstanceID, e.ErasureResult})
	}
	return writeErasures(os.Stdout, rows)
}

type erasureRow struct {
	instance string
	e        consentv1.ErasureResult
}

func writeErasures(out io.Writer, rows []erasureRow) error {
	if len(rows) == 0 {
		_, err := fmt.Fprintln(out, "(none)")
		return err
	}
	tw := tabwriter.NewWriter(out, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "INSTANCE\tREQUEST\tSCOPE\tFROM\tTO\tREQUESTED BY\tREQUESTED AT\tOWNER\tEVENTS\tAGGREGATES\tVERIFIED AT")
	for _, r := range rows {
		from, verified := "(start)", "NOT VERIFIED"
		if r.e.From != nil {
			from = rfc3339(*r.e.From)
		}
		if r.e.VerifiedAt != nil {
			verified = rfc3339(*r.e.VerifiedAt)
		}
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%d\t%d\t%s\n", r.instance, r.e.RequestID, r.e.Scope, from, rfc3339(r.e.To),
			r.e.RequestedBy, rfc3339(r.e.RequestedAt), r.e.Owner.String(), r.e.EventsDeleted, r.e.AggregatesDeleted, verified)
	}
	return tw.Flush()
}

func rfc3339(t time.Time) string { return t.UTC().Format(time.RFC3339Nano) }

func dash(s string) string {
	if s == "" {
		return "-"
	}
	return s
}
