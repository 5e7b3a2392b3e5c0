// Command goclient is the Go client of jetgate's interop tests: grpc-go with stubs that
// `make goclient` generates from proto/ (protoc-gen-go, protoc-gen-go-grpc) into the nested
// module jetgate.dev/genproto. Every subcommand prints JSON (one object per line).
//
//	goclient publish -addr A -count N [-key K | -key-prefix P] [-id-prefix I]
//	    publishes N OrderPlaced events (ids I-0..I-N-1; key K, or P-i) with PublishBatch,
//	    prints {"published", "duplicates", "stream", "first_sequence", "last_sequence"}.
//	goclient bad-request -addr A
//	    publishes an invalid event, prints the status code and the google.rpc.BadRequest
//	    field violations of the grpc-status-details-bin trailer.
//	goclient conflict -addr A -key K -expected N
//	    publishes with expected_last_key_sequence N, prints the code and the SequenceConflict.
//	goclient subscribe -addr A -group G [-max-in-flight N] [-count N] [-nak ID -nak-delay-ms D]
//	    [-reject ID -reason R] [-hold-after N]
//	    joins group G: prints {"kind":"subscribed",...}, then one {"kind":"settled",...}
//	    line per delivery once the gateway confirms its settlement (ACK; NAK of the first
//	    attempt of event ID with delay D, or without one: the group's backoff; REJECT of
//	    event ID with reason R). After sending
//	    N final settlements (ACK/REJECT) with -hold-after, every further delivery is held
//	    unsettled ({"kind":"held"}); with -count it exits after N confirmed final ones.
//	goclient read -addr A -event-type T -key K [-from-sequence S] [-last N] [-limit N]
//	    [-max-events-per-response N]
//	    prints each stored event of the key's history ({"kind":"event"}, with how many
//	    came in its response message) and the CaughtUp.
//	goclient dead-letters -addr A -group G
//	    lists the group's dead letters with the Admin service ({"kind":"dead_letter"}).
//
// Exit status: 0 when the call was answered (an error status is printed, not fatal for
// bad-request and conflict), 1 on any other error, 2 on bad usage.
package main

import (
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"os/signal"
	"strings"
	"syscall"
	"time"

	"google.golang.org/genproto/googleapis/rpc/errdetails"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/keepalive"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/types/known/anypb"
	"google.golang.org/protobuf/types/known/durationpb"

	ordersv1 "jetgate.dev/genproto/jetgate/examples/orders/v1"
	jetgatev1 "jetgate.dev/genproto/jetgate/v1"
)

var out = json.NewEncoder(os.Stdout)

func main() {
	if len(os.Args) < 2 {
		fail(2, "usage: goclient publish|bad-request|conflict|subscribe|read|dead-letters -h")
	}
	commands := map[string]func([]string) error{
		"publish": publish, "bad-request": badRequest, "conflict": conflict,
		"subscribe": subscribe, "read": read, "dead-letters": deadLetters,
	}
	run, ok := commands[os.Args[1]]
	if !ok {
		fail(2, "unknown subcommand %q", os.Args[1])
	}
	if err := run(os.Args[2:]); err != nil {
		fail(1, "%s: %v", os.Args[1], err)
	}
}

func fail(code int, format string, args ...any) {
	fmt.Fprintf(os.Stderr, "goclient: "+format+"\n", args...)
	os.Exit(code)
}

func emit(v any) {
	if err := out.Encode(v); err != nil {
		fail(1, "writing stdout: %v", err)
	}
}

// connect opens the one channel a client keeps, with docs/clients.md's settings.
func connect(addr string) (jetgatev1.EventGatewayClient, func(), error) {
	conn, err := dial(addr)
	if err != nil {
		return nil, nil, err
	}
	return jetgatev1.NewEventGatewayClient(conn), func() { conn.Close() }, nil
}

func dial(addr string) (*grpc.ClientConn, error) {
	return grpc.NewClient(addr,
		grpc.WithTransportCredentials(insecure.NewCredentials()),
		grpc.WithKeepaliveParams(keepalive.ClientParameters{
			Time: 10 * time.Second, Timeout: 5 * time.Second, PermitWithoutStream: true,
		}),
		grpc.WithDefaultCallOptions(grpc.MaxCallRecvMsgSize(64<<20)))
}

func orderPlaced(id, key string) (*jetgatev1.PublishRequest, error) {
	payload, err := anypb.New(&ordersv1.OrderPlaced{OrderId: key, CustomerId: "c-go"})
	if err != nil {
		return nil, err
	}
	return &jetgatev1.PublishRequest{Event: &jetgatev1.Event{Id: id, Key: key, Payload: payload}}, nil
}

func publish(args []string) error {
	fs := flag.NewFlagSet("publish", flag.ExitOnError)
	addr := fs.String("addr", "127.0.0.1:50051", "gateway address")
	count := fs.Int("count", 1, "events to publish")
	key := fs.String("key", "", "one key for every event")
	keyPrefix := fs.String("key-prefix", "go-o", "key of event i: PREFIX-i (without -key)")
	idPrefix := fs.String("id-prefix", "go", "id of event i: PREFIX-i")
	batch := fs.Int("batch", 500, "events per PublishBatch call")
	fs.Parse(args)
	client, closeConn, err := connect(*addr)
	if err != nil {
		return err
	}
	defer closeConn()
	summary := map[string]any{"published": 0, "duplicates": 0}
	for start := 0; start < *count; start += *batch {
		request := &jetgatev1.PublishBatchRequest{}
		for i := start; i < min(start+*batch, *count); i++ {
			k := *key
			if k == "" {
				k = fmt.Sprintf("%s-%d", *keyPrefix, i)
			}
			entry, err := orderPlaced(fmt.Sprintf("%s-%d", *idPrefix, i), k)
			if err != nil {
				return err
			}
			request.Entries = append(request.Entries, entry)
		}
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		reply, err := client.PublishBatch(ctx, request)
		cancel()
		if err != nil {
			return err
		}
		for i, result := range reply.GetResults() {
			if e := result.GetError(); e != nil {
				return fmt.Errorf("entry %s: %s: %s", request.Entries[i].Event.Id, codes.Code(e.Code), e.Message)
			}
			ok := result.GetOk()
			summary["published"] = summary["published"].(int) + 1
			if ok.Duplicate {
				summary["duplicates"] = summary["duplicates"].(int) + 1
			}
			if _, seen := summary["first_sequence"]; !seen {
				summary["first_sequence"] = ok.Sequence
			}
			summary["last_sequence"], summary["stream"] = ok.Sequence, ok.Stream
		}
	}
	emit(summary)
	return nil
}

// errorReport is what bad-request and conflict print: the code and the decoded details of
// the google.rpc.Status that grpc-go reads from the grpc-status-details-bin trailer.
func errorReport(err error) (map[string]any, error) {
	if err == nil {
		return map[string]any{"code": codes.OK.String()}, nil
	}
	st, ok := status.FromError(err)
	if !ok {
		return nil, err
	}
	report := map[string]any{"code": st.Code().String(), "message": st.Message()}
	var violations []map[string]string
	for _, detail := range st.Details() {
		switch d := detail.(type) {
		case *errdetails.BadRequest:
			for _, v := range d.GetFieldViolations() {
				violations = append(violations, map[string]string{"field": v.GetField(), "description": v.GetDescription()})
			}
		case *jetgatev1.SequenceConflict:
			report["conflict"] = map[string]any{
				"condition": d.GetCondition(), "subject": d.GetSubject(),
				"expected_sequence": d.GetExpectedSequence(), "actual_sequence": d.GetActualSequence(),
			}
		case error:
			return nil, fmt.Errorf("undecodable detail: %w", d)
		}
	}
	if violations != nil {
		report["violations"] = violations
	}
	return report, nil
}

func badRequest(args []string) error {
	fs := flag.NewFlagSet("bad-request", flag.ExitOnError)
	addr := fs.String("addr", "127.0.0.1:50051", "gateway address")
	fs.Parse(args)
	client, closeConn, err := connect(*addr)
	if err != nil {
		return err
	}
	defer closeConn()
	// Two faults at once: a key with whitespace and a reserved header name.
	request, err := orderPlaced("go-bad", "bad key")
	if err != nil {
		return err
	}
	request.Event.Headers = map[string]string{"Nats-Msg-Id": "forged"}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	_, err = client.Publish(ctx, request)
	report, err := errorReport(err)
	if err != nil {
		return err
	}
	emit(report)
	return nil
}

func conflict(args []string) error {
	fs := flag.NewFlagSet("conflict", flag.ExitOnError)
	addr := fs.String("addr", "127.0.0.1:50051", "gateway address")
	key := fs.String("key", "go-o-1", "the aggregate's key")
	id := fs.String("id", "go-conflict", "the event id")
	expected := fs.Uint64("expected", 0, "expected_last_key_sequence")
	fs.Parse(args)
	client, closeConn, err := connect(*addr)
	if err != nil {
		return err
	}
	defer closeConn()
	request, err := orderPlaced(*id, *key)
	if err != nil {
		return err
	}
	request.Precondition = &jetgatev1.Precondition{
		Condition: &jetgatev1.Precondition_ExpectedLastKeySequence{ExpectedLastKeySequence: *expected},
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	_, err = client.Publish(ctx, request)
	report, err := errorReport(err)
	if err != nil {
		return err
	}
	emit(report)
	return nil
}

// record describes one delivery as the subscribe lines print it.
func record(kind string, d *jetgatev1.Delivery) map[string]any {
	e := d.GetEvent()
	return map[string]any{
		"kind": kind, "event_id": e.GetId(), "key": e.GetKey(), "subject": e.GetSubject(),
		"sequence": e.GetSequence(), "attempt": d.GetAttempt(),
		"type":        strings.TrimPrefix(e.GetPayload().GetTypeUrl(), "type.googleapis.com/"),
		"traceparent": d.GetTraceContext()["traceparent"],
	}
}

func subscribe(args []string) error {
	fs := flag.NewFlagSet("subscribe", flag.ExitOnError)
	addr := fs.String("addr", "127.0.0.1:50051", "gateway address")
	group := fs.String("group", "", "the declared consumer group")
	streamName := fs.String("stream", "", "the group's stream (optional check)")
	maxInFlight := fs.Uint("max-in-flight", 16, "credits: deliveries held unsettled at once")
	count := fs.Int("count", 0, "exit after this many confirmed ACK/REJECT settlements (0: never)")
	nakID := fs.String("nak", "", "NAK the first attempt of this event id")
	nakDelay := fs.Int("nak-delay-ms", 0, "delay of that NAK in milliseconds (0: none, the group's backoff applies)")
	rejectID := fs.String("reject", "", "REJECT this event id")
	reason := fs.String("reason", "rejected by the Go client", "the REJECT reason")
	holdAfter := fs.Int("hold-after", 0, "after this many ACK/REJECT sent, hold every delivery unsettled (0: never)")
	fs.Parse(args)
	client, closeConn, err := connect(*addr)
	if err != nil {
		return err
	}
	defer closeConn()
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGTERM, syscall.SIGINT)
	defer stop()
	stream, err := client.Subscribe(ctx)
	if err != nil {
		return err
	}
	open := &jetgatev1.SubscribeOpen{Group: *group, Stream: *streamName, MaxInFlight: uint32(*maxInFlight)}
	if err := stream.Send(&jetgatev1.SubscribeRequest{Open: open}); err != nil {
		return err
	}
	sent := map[string]map[string]any{} // ack id -> its line, until confirmed
	nakedAt := map[string]time.Time{}   // event id -> when its NAK was sent
	finalSent, finalConfirmed := 0, 0
	for {
		response, err := stream.Recv()
		if err != nil {
			if ctx.Err() != nil || errors.Is(err, io.EOF) {
				return nil // stopped by a signal, or the gateway ended the stream
			}
			return err
		}
		if s := response.GetSubscribed(); s != nil {
			emit(map[string]any{
				"kind": "subscribed", "group": s.GetGroup(), "stream": s.GetStream(),
				"max_in_flight": s.GetMaxInFlight(), "max_deliver": s.GetMaxDeliver(),
				"ack_wait_seconds": s.GetAckWait().AsDuration().Seconds(),
			})
		}
		var settlements []*jetgatev1.Settlement
		for _, d := range response.GetDeliveries() {
			if *holdAfter > 0 && finalSent >= *holdAfter {
				emit(record("held", d))
				continue
			}
			s := &jetgatev1.Settlement{AckId: d.GetAckId(), Action: jetgatev1.Settlement_ACTION_ACK}
			switch id := d.GetEvent().GetId(); {
			case id == *nakID && d.GetAttempt() == 1:
				s.Action = jetgatev1.Settlement_ACTION_NAK
				if *nakDelay > 0 {
					s.Delay = durationpb.New(time.Duration(*nakDelay) * time.Millisecond)
				}
			case id == *rejectID:
				s.Action, s.Reason = jetgatev1.Settlement_ACTION_REJECT, *reason
			}
			if s.Action != jetgatev1.Settlement_ACTION_NAK {
				finalSent++
			}
			line := record("settled", d)
			if at, ok := nakedAt[d.GetEvent().GetId()]; ok {
				line["seconds_since_nak"] = time.Since(at).Seconds()
			}
			if s.Action == jetgatev1.Settlement_ACTION_NAK {
				nakedAt[d.GetEvent().GetId()] = time.Now()
			}
			line["action"] = strings.TrimPrefix(s.Action.String(), "ACTION_")
			sent[s.AckId] = line
			settlements = append(settlements, s)
		}
		if len(settlements) > 0 {
			if err := stream.Send(&jetgatev1.SubscribeRequest{Settlements: settlements}); err != nil {
				return err
			}
		}
		for _, result := range response.GetSettled() {
			line, ok := sent[result.GetAckId()]
			if !ok {
				return fmt.Errorf("confirmation of ack id %q this client never settled", result.GetAckId())
			}
			delete(sent, result.GetAckId())
			line["status"] = strings.TrimPrefix(result.GetStatus().String(), "STATUS_")
			if result.GetDetail() != "" {
				line["detail"] = result.GetDetail()
			}
			emit(line)
			applied := result.GetStatus() == jetgatev1.SettlementResult_STATUS_APPLIED
			if applied && line["action"] != "NAK" {
				finalConfirmed++
			}
		}
		if *count > 0 && finalConfirmed >= *count {
			return stream.CloseSend()
		}
	}
}

func read(args []string) error {
	fs := flag.NewFlagSet("read", flag.ExitOnError)
	addr := fs.String("addr", "127.0.0.1:50051", "gateway address")
	eventType := fs.String("event-type", "jetgate.examples.orders.v1.OrderPlaced", "any event type of the aggregate's route")
	key := fs.String("key", "", "the aggregate's key")
	fromSequence := fs.Uint64("from-sequence", 0, "from this stream sequence on")
	last := fs.Uint64("last", 0, "only the last N events")
	limit := fs.Uint64("limit", 0, "at most N events")
	perResponse := fs.Uint("max-events-per-response", 0, "events per response message (0: one each)")
	fs.Parse(args)
	client, closeConn, err := connect(*addr)
	if err != nil {
		return err
	}
	defer closeConn()
	request := &jetgatev1.ReadRequest{
		Selector:             &jetgatev1.ReadRequest_Key{Key: &jetgatev1.KeySelector{EventType: *eventType, Key: *key}},
		Limit:                *limit,
		MaxEventsPerResponse: uint32(*perResponse),
	}
	switch {
	case *last > 0:
		request.Start = &jetgatev1.ReadRequest_Last{Last: *last}
	case *fromSequence > 0:
		request.Start = &jetgatev1.ReadRequest_FromSequence{FromSequence: *fromSequence}
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	stream, err := client.Read(ctx, request)
	if err != nil {
		return err
	}
	for {
		response, err := stream.Recv()
		if errors.Is(err, io.EOF) {
			return nil
		}
		if err != nil {
			return err
		}
		if up := response.GetCaughtUp(); up != nil {
			emit(map[string]any{"kind": "caught_up", "last_sequence": up.GetLastSequence(), "count": up.GetCount()})
			continue
		}
		batch := response.GetEvents().GetEvents() // with -max-events-per-response > 1
		if one := response.GetEvent(); one != nil {
			batch = []*jetgatev1.StoredEvent{one}
		}
		for _, stored := range batch {
			if err := emitStored(stored, len(batch)); err != nil {
				return err
			}
		}
	}
}

func emitStored(stored *jetgatev1.StoredEvent, inResponse int) error {
	e := stored.GetEvent()
	payload, err := e.GetPayload().UnmarshalNew() // a type this client was built with
	if err != nil {
		return fmt.Errorf("event %s: %w", e.GetId(), err)
	}
	emit(map[string]any{
		"kind": "event", "event_id": e.GetId(), "key": e.GetKey(), "subject": e.GetSubject(),
		"sequence": e.GetSequence(), "stream": e.GetStream(), "in_response": inResponse,
		"type":        string(payload.ProtoReflect().Descriptor().FullName()),
		"stored_time": stored.GetStoredTime().AsTime().Format(time.RFC3339Nano),
	})
	return nil
}

func deadLetters(args []string) error {
	fs := flag.NewFlagSet("dead-letters", flag.ExitOnError)
	addr := fs.String("addr", "127.0.0.1:50051", "gateway address")
	group := fs.String("group", "", "the consumer group")
	fs.Parse(args)
	conn, err := dial(*addr)
	if err != nil {
		return err
	}
	defer conn.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	reply, err := jetgatev1.NewAdminClient(conn).ListDeadLetters(ctx, &jetgatev1.ListDeadLettersRequest{Group: *group})
	if err != nil {
		return err
	}
	for _, d := range reply.GetDeadLetters() {
		emit(map[string]any{
			"kind": "dead_letter", "event_id": d.GetEventId(), "group": d.GetGroup(),
			"origin_stream": d.GetOriginStream(), "origin_sequence": d.GetOriginSequence(),
			"reason": d.GetReason(), "error": d.GetError(), "attempts": d.GetAttempts(),
		})
	}
	return nil
}
