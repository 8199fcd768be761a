// Command nats-token-file-client connects to NATS with the pod's projected service-account
// token, reading the token file again at every connect and reconnect, and exchanges greetings
// on <namespace>.greetings.
//
//	NATS_URL=nats://nats.nats.svc.cluster.local:4222 \
//	NATS_TOKEN_FILE=/var/run/secrets/nats/token NATS_NAMESPACE=team-a \
//	go run . [-count N]
package main

import (
	"flag"
	"fmt"
	"log"
	"os"
	"os/signal"
	"strings"
	"syscall"
	"time"

	"github.com/nats-io/nats.go"
)

func getenv(name, fallback string) string {
	if v := os.Getenv(name); v != "" {
		return v
	}
	return fallback
}

func main() {
	count := flag.Int("count", 0, "stop after receiving this many messages (0: run until SIGTERM)")
	flag.Parse()
	url := getenv("NATS_URL", nats.DefaultURL)
	tokenFile := getenv("NATS_TOKEN_FILE", "/var/run/secrets/nats/token")
	namespace := os.Getenv("NATS_NAMESPACE")
	if namespace == "" {
		log.Fatal("NATS_NAMESPACE is required")
	}

	closed := make(chan struct{})
	nc, err := nats.Connect(url,
		nats.Name("token-file-example"),
		// Called for every CONNECT the client sends: the first one and each reconnect, so
		// the client presents what the kubelet last wrote to the file.
		nats.TokenHandler(func() string {
			b, err := os.ReadFile(tokenFile)
			if err != nil {
				fmt.Printf("error: read token: %v\n", err)
				return ""
			}
			return strings.TrimSpace(string(b))
		}),
		nats.MaxReconnects(-1), // never give up
		nats.ReconnectWait(time.Second),
		nats.RetryOnFailedConnect(true), // keep trying when the first attempt fails too
		// By default two refusals in a row close the connection for good; keep trying
		// instead, the next token in the file may be accepted.
		nats.IgnoreAuthErrorAbort(),
		// Only called when the first connect succeeds after retries; see below.
		nats.ConnectHandler(func(*nats.Conn) { fmt.Println("connected") }),
		nats.DisconnectErrHandler(func(*nats.Conn, error) { fmt.Println("disconnected") }),
		nats.ReconnectHandler(func(*nats.Conn) { fmt.Println("reconnected") }),
		nats.ReconnectErrHandler(func(_ *nats.Conn, err error) { fmt.Printf("error: %v\n", err) }),
		nats.ErrorHandler(func(_ *nats.Conn, _ *nats.Subscription, err error) {
			fmt.Printf("error: %v\n", err)
		}),
		nats.ClosedHandler(func(*nats.Conn) { close(closed) }),
	)
	if err != nil {
		log.Fatal(err)
	}
	if nc.IsConnected() {
		fmt.Println("connected")
	}

	subject := namespace + ".greetings"
	done := make(chan struct{})
	received := 0
	// Callbacks of one subscription run one at a time, so `received` needs no lock.
	_, err = nc.Subscribe(subject, func(m *nats.Msg) {
		if received >= *count && *count > 0 {
			return // messages still arriving while the client drains
		}
		received++
		fmt.Printf("received %s: %s\n", m.Subject, m.Data)
		if received == *count {
			close(done)
		}
	})
	if err != nil {
		log.Fatal(err)
	}

	stop := make(chan os.Signal, 1)
	signal.Notify(stop, syscall.SIGTERM, syscall.SIGINT)
	tick := time.NewTicker(time.Second)
	defer tick.Stop()
	for sent := 1; ; sent++ {
		// While reconnecting, the client buffers the message and sends it afterwards.
		if err := nc.Publish(subject, []byte(fmt.Sprintf("hello %d from go", sent))); err != nil {
			fmt.Printf("error: %v\n", err)
		}
		select {
		case <-tick.C:
			continue
		case <-done:
		case <-stop:
		}
		break
	}
	// Drain refuses a connection that is still reconnecting: close it then.
	if err := nc.Drain(); err != nil {
		nc.Close()
	}
	select {
	case <-closed:
	case <-time.After(10 * time.Second):
	}
	fmt.Println("stopped")
}
