// Command cloudevents is the CloudEvents peer of jetgate's interop tests: the official
// CloudEvents Go SDK (sdk-go v2 with its NATS JetStream binding) on jetgate's streams.
//
//	cloudevents receive -url U -stream S -subject F -count N
//	    receives N events with the SDK's high-level client (client.StartReceiver, which
//	    validates every event and silently drops an invalid one) and prints each as one
//	    JSON line: id, source, type, subject, time, dataschema, datacontenttype,
//	    specversion, extensions, data (base64). Exits 3 when N events do not arrive in time.
//	cloudevents send -url U -stream S -subject SUBJ -id ID -source SRC -type T
//	    -dataschema URI -data BASE64 [-ext name=value]... [-msg-id]
//	    sends one binary-mode CloudEvent (datacontenttype application/protobuf). Without
//	    -msg-id through the SDK's client (client.Send), as a Go service following the SDK's
//	    docs would; with -msg-id through the binding's WriteMsg plus a `Nats-Msg-Id` header
//	    (the CloudEvents id) so JetStream de-duplicates it, printing the PubAck as JSON.
package main

import (
	"bytes"
	"context"
	"encoding/base64"
	"encoding/json"
	"flag"
	"fmt"
	"os"
	"strings"
	"sync"
	"time"

	jetstream "github.com/cloudevents/sdk-go/protocol/nats_jetstream/v2"
	"github.com/cloudevents/sdk-go/v2/binding"
	"github.com/cloudevents/sdk-go/v2/client"
	"github.com/cloudevents/sdk-go/v2/event"
	"github.com/cloudevents/sdk-go/v2/protocol"
	"github.com/nats-io/nats.go"
)

type extensions map[string]string

func (x extensions) String() string { return fmt.Sprint(map[string]string(x)) }

func (x extensions) Set(pair string) error {
	name, value, ok := strings.Cut(pair, "=")
	if !ok {
		return fmt.Errorf("extension %q is not name=value", pair)
	}
	x[name] = value
	return nil
}

func main() {
	if len(os.Args) < 2 {
		fail(2, "usage: cloudevents receive|send -h")
	}
	var err error
	switch os.Args[1] {
	case "receive":
		err = receive(os.Args[2:])
	case "send":
		err = send(os.Args[2:])
	default:
		fail(2, "unknown command %q: receive or send", os.Args[1])
	}
	if err != nil {
		fail(1, "%v", err)
	}
}

func fail(code int, format string, args ...any) {
	fmt.Fprintf(os.Stderr, "cloudevents: "+format+"\n", args...)
	os.Exit(code)
}

func receive(args []string) error {
	flags := flag.NewFlagSet("receive", flag.ExitOnError)
	url := flags.String("url", "", "NATS server URL")
	stream := flags.String("stream", "", "JetStream stream")
	subject := flags.String("subject", "", "subject filter")
	count := flags.Int("count", 1, "events to receive")
	timeout := flags.Duration("timeout", 20*time.Second, "how long to wait for them")
	_ = flags.Parse(args)

	consumer, err := jetstream.NewConsumer(
		*url, *stream, *subject, nil, nil, []nats.SubOpt{nats.DeliverAll()},
	)
	if err != nil {
		return fmt.Errorf("consumer: %w", err)
	}
	defer consumer.Close(context.Background())
	ce, err := client.New(consumer, client.WithBlockingCallback())
	if err != nil {
		return fmt.Errorf("client: %w", err)
	}

	ctx, cancel := context.WithTimeout(context.Background(), *timeout)
	defer cancel()
	var mu sync.Mutex
	received := 0
	out := json.NewEncoder(os.Stdout)
	err = ce.StartReceiver(ctx, func(e event.Event) {
		mu.Lock()
		defer mu.Unlock()
		if received >= *count {
			return
		}
		if err := out.Encode(describe(e)); err != nil {
			fail(1, "print: %v", err)
		}
		received++
		if received == *count {
			cancel()
		}
	})
	if err != nil {
		return fmt.Errorf("receiver: %w", err)
	}
	mu.Lock()
	defer mu.Unlock()
	if received < *count {
		fail(3, "received %d of %d events within %s", received, *count, *timeout)
	}
	return nil
}

func describe(e event.Event) map[string]any {
	ext := map[string]string{}
	for name, value := range e.Extensions() {
		ext[name] = fmt.Sprint(value)
	}
	return map[string]any{
		"specversion":     e.SpecVersion(),
		"id":              e.ID(),
		"source":          e.Source(),
		"type":            e.Type(),
		"subject":         e.Subject(),
		"time":            e.Time().UTC().Format(time.RFC3339Nano),
		"dataschema":      e.DataSchema(),
		"datacontenttype": e.DataContentType(),
		"extensions":      ext,
		"data":            base64.StdEncoding.EncodeToString(e.Data()),
	}
}

func send(args []string) error {
	flags := flag.NewFlagSet("send", flag.ExitOnError)
	url := flags.String("url", "", "NATS server URL")
	stream := flags.String("stream", "", "JetStream stream")
	subject := flags.String("subject", "", "subject to publish to")
	id := flags.String("id", "", "CloudEvents id")
	source := flags.String("source", "", "CloudEvents source")
	typ := flags.String("type", "", "CloudEvents type (the full protobuf name)")
	schema := flags.String("dataschema", "", "CloudEvents dataschema")
	data := flags.String("data", "", "the protobuf payload, base64")
	msgID := flags.Bool("msg-id", false, "set Nats-Msg-Id to the id (de-duplication)")
	ext := extensions{}
	flags.Var(ext, "ext", "extension attribute name=value (repeatable)")
	_ = flags.Parse(args)

	payload, err := base64.StdEncoding.DecodeString(*data)
	if err != nil {
		return fmt.Errorf("-data: %w", err)
	}
	e := event.New()
	e.SetID(*id)
	e.SetSource(*source)
	e.SetType(*typ)
	e.SetTime(time.Now())
	e.SetDataSchema(*schema)
	for name, value := range ext {
		e.SetExtension(name, value)
	}
	if err := e.SetData("application/protobuf", payload); err != nil {
		return fmt.Errorf("data: %w", err)
	}
	if err := e.Validate(); err != nil {
		return fmt.Errorf("invalid event: %w", err)
	}

	sender, err := jetstream.NewSender(*url, *stream, *subject, nil, nil)
	if err != nil {
		return fmt.Errorf("sender: %w", err)
	}
	defer sender.Close(context.Background())
	ctx := context.Background()
	if !*msgID {
		ce, err := client.New(sender)
		if err != nil {
			return fmt.Errorf("client: %w", err)
		}
		if result := ce.Send(ctx, e); !protocol.IsACK(result) {
			return fmt.Errorf("send: %w", result)
		}
		return json.NewEncoder(os.Stdout).Encode(map[string]any{"sent": e.ID()})
	}
	// The binding's own encoding, plus the one header the SDK does not set.
	body := new(bytes.Buffer)
	header, err := jetstream.WriteMsg(ctx, binding.ToMessage(&e), body)
	if err != nil {
		return fmt.Errorf("encode: %w", err)
	}
	header.Set(nats.MsgIdHdr, e.ID())
	ack, err := sender.Jsm.PublishMsg(&nats.Msg{Subject: *subject, Header: header, Data: body.Bytes()})
	if err != nil {
		return fmt.Errorf("publish: %w", err)
	}
	return json.NewEncoder(os.Stdout).Encode(map[string]any{
		"sent": e.ID(), "stream": ack.Stream, "sequence": ack.Sequence, "duplicate": ack.Duplicate,
	})
}
