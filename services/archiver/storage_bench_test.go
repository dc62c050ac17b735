package main

import (
	"context"
	"fmt"
	"sync"
	"testing"
	"time"

	"github.com/announcer/announcer/pkg/benchreport"
	"github.com/announcer/announcer/pkg/config"
	"github.com/announcer/announcer/pkg/kafkabus"
	"github.com/announcer/announcer/pkg/testkit/kafkatest"
	"github.com/announcer/announcer/pkg/testkit/stacktest"
	"github.com/announcer/announcer/services/archiver/internal/archive"
	"github.com/announcer/announcer/services/archiver/internal/storage"
)

// BenchmarkStorageWrite writes storage records to the stack's Kafka as the
// archiver does: a delivery batch's records in one call, 8 batches at once
// (the archiver's records in flight), on a topic of 6 partitions. The
// baseline is the writer the archiver had before, kafka-go's 100 records a
// request with flush_frequency (1 s in configs/announcer.toml) as linger.
// Each op is one delivery batch; the figures are per 1,000 records:
// produce requests, the broker's CPU (from /proc) and the wall time.
//
//	eval "$(bash scripts/stack/stack.sh env)"; cd services/archiver && go test -run '^$' -bench StorageWrite -benchtime 200x .
func BenchmarkStorageWrite(b *testing.B) {
	env := stacktest.Get(b)
	cfg := config.Default()
	cfg.KafkaProducer.FlushFrequency = 1
	const perBatch, inFlight = 500, 8
	cfg.Fanout.BatchSize = perBatch
	records := make([]archive.Record, perBatch)
	for i := range records {
		jid := fmt.Sprintf("user%07d@localhost", i)
		records[i] = archive.Record{Key: []byte(jid), Value: []byte(rendered(jid, i))}
	}
	kafkaPID := env.ServerPIDs()["kafka"]
	for _, c := range []struct {
		name string
		o    kafkabus.WriterOptions
	}{
		{"before", kafkabus.WriterOptions{BatchTimeout: time.Second, MaxAttempts: cfg.KafkaProducer.MaxRetry + 1}},
		{"archiver", storageWriterOptions(cfg, nil)},
	} {
		topic := kafkatest.Topics(b, env.KafkaBrokers, 6, "arcbench")[0]
		for i := range records {
			records[i].Topic = topic
		}
		b.Run(c.name, func(b *testing.B) {
			w := kafkabus.NewWriter(kafkabus.Plaintext(env.KafkaBrokers), c.o)
			defer w.Close()
			st := storage.New(w, []string{topic})
			ctx := context.Background()
			if err := st.Store(ctx, "warm-up", records); err != nil {
				b.Fatal(err)
			}
			_ = w.Stats() // counts from here
			_, cpu0, _ := benchreport.ProcessCPU(kafkaPID)
			b.ResetTimer()
			var wg sync.WaitGroup
			work := make(chan struct{})
			errs := make(chan error, inFlight)
			for range inFlight {
				wg.Go(func() {
					for range work {
						if err := st.Store(ctx, "bench", records); err != nil {
							errs <- err
							return
						}
					}
				})
			}
			for range b.N {
				work <- struct{}{}
			}
			close(work)
			wg.Wait()
			b.StopTimer()
			select {
			case err := <-errs:
				b.Fatal(err)
			default:
			}
			_, cpu1, ok := benchreport.ProcessCPU(kafkaPID)
			k := float64(b.N*perBatch) / 1000
			b.ReportMetric(float64(w.Stats().Writes)/k, "requests/1k-records")
			if ok {
				b.ReportMetric((cpu1-cpu0)*1000/k, "broker-ms/1k-records")
			}
			b.ReportMetric(b.Elapsed().Seconds()*1000/k, "ms/1k-records")
		})
	}
}
