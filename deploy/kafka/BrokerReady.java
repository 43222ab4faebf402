import java.util.Collection;
import java.util.Properties;
import java.util.concurrent.TimeUnit;
import org.apache.kafka.clients.admin.Admin;
import org.apache.kafka.clients.admin.AdminClientConfig;
import org.apache.kafka.common.Node;

/**
 * Waits until a broker answers a metadata request, not merely until its port is open:
 * a KRaft broker accepts TCP connections before it has caught up with the metadata log.
 *
 * Usage: java BrokerReady HOST:PORT TIMEOUT_SECONDS [BROKERS]. Exit 0 once the broker lists at
 * least BROKERS (default 1) registered brokers, 1 on timeout. Asked of every node of a cluster
 * with the cluster's size, it also waits until a restarted node has re-registered.
 * Polls inside one JVM because starting a JVM per attempt costs more than the wait.
 */
public final class BrokerReady {
    public static void main(String[] args) throws InterruptedException {
        String bootstrap = args[0];
        long deadline = System.nanoTime() + TimeUnit.SECONDS.toNanos(Long.parseLong(args[1]));
        int expected = args.length > 2 ? Integer.parseInt(args[2]) : 1;
        Properties props = new Properties();
        props.put(AdminClientConfig.BOOTSTRAP_SERVERS_CONFIG, bootstrap);
        props.put(AdminClientConfig.REQUEST_TIMEOUT_MS_CONFIG, "2000");
        props.put(AdminClientConfig.DEFAULT_API_TIMEOUT_MS_CONFIG, "2000");
        // Short backoffs: the broker is expected within seconds and every second counts in CI.
        props.put(AdminClientConfig.RECONNECT_BACKOFF_MAX_MS_CONFIG, "200");
        props.put(AdminClientConfig.RETRY_BACKOFF_MAX_MS_CONFIG, "200");
        String lastError = "no attempt made";
        try (Admin admin = Admin.create(props)) {
            while (System.nanoTime() < deadline) {
                try {
                    Collection<Node> nodes = admin.describeCluster().nodes().get(2, TimeUnit.SECONDS);
                    if (nodes.size() >= expected) {
                        return;
                    }
                    lastError = "metadata response listed " + nodes.size() + " of " + expected + " brokers";
                } catch (Exception e) {
                    lastError = String.valueOf(e.getCause() != null ? e.getCause() : e);
                }
                Thread.sleep(200);
            }
        }
        System.err.println("broker at " + bootstrap + " not ready: " + lastError);
        System.exit(1);
    }
}
