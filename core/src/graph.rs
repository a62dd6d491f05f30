//! The resource graph: one node per engine instance and per object declared in one (role, database, bucket,
//! stream…), and an edge from each node to every node that depends on it.
//!
//! Edges come from nesting (an instance exists before its databases), from references
//! (`env = { URL = postgres.main.url }` makes the process wait for PostgreSQL) and from `depends_on`. The graph is
//! acyclic by construction: [`Graph::build`] refuses a cycle with a diagnostic that names every node on it, in
//! order. Apply walks it by releasing a node when its last dependency is done.

use std::collections::{BTreeSet, HashMap, VecDeque};
use std::fmt::Write as _;

use petgraph::Direction;
use petgraph::algo::tarjan_scc;
use petgraph::graph::{DiGraph, NodeIndex};
use petgraph::visit::EdgeRef;

use crate::config::{Address, Body, Config, Declared};
use crate::diag::Diagnostic;

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum EdgeReason {
    Nesting,
    Reference,
    DependsOn,
}

/// An edge as the checker found it: `to` depends on `from`.
#[derive(Debug, Clone)]
pub struct GraphEdge {
    pub from: Address,
    pub to: Address,
    pub reason: EdgeReason,
    /// Where the reference or `depends_on` entry is written; `None` for nesting.
    pub declared: Option<Declared>,
}

#[derive(Debug, Clone)]
pub struct Node {
    pub address: Address,
    /// The engine block type, e.g. "postgres".
    pub engine: String,
    /// The object kind ("database", "role"); `None` for the instance itself.
    pub kind: Option<String>,
    pub declared: Declared,
}

#[derive(Debug, Clone)]
pub struct Graph {
    graph: DiGraph<Node, (EdgeReason, Option<Declared>)>,
    by_address: foldhash::HashMap<Address, NodeIndex>,
}

impl Graph {
    /// Builds the graph of `config`'s instances and objects with `edges`; a cycle is an error naming its nodes.
    pub fn build(config: &Config, edges: Vec<GraphEdge>) -> Result<Graph, Vec<Diagnostic>> {
        let nodes = config
            .instances
            .iter()
            .map(|instance| 1 + count_objects(&instance.body))
            .sum();
        let mut graph = DiGraph::with_capacity(nodes, edges.len());
        let mut by_address = foldhash::HashMap::with_capacity_and_hasher(
            nodes,
            foldhash::fast::RandomState::default(),
        );
        for instance in &config.instances {
            let node = Node {
                address: instance.address.clone(),
                engine: instance.engine.name.to_owned(),
                kind: None,
                declared: instance.declared.clone(),
            };
            by_address.insert(instance.address.clone(), graph.add_node(node));
            add_objects(
                &mut graph,
                &mut by_address,
                instance.engine.name,
                &instance.body,
            );
        }
        let mut seen = BTreeSet::new();
        for edge in edges {
            let (Some(&from), Some(&to)) = (by_address.get(&edge.from), by_address.get(&edge.to))
            else {
                continue;
            };
            if seen.insert((from, to)) {
                graph.add_edge(from, to, (edge.reason, edge.declared));
            }
        }
        let built = Graph { graph, by_address };
        let cycles = built.cycles();
        if cycles.is_empty() {
            Ok(built)
        } else {
            Err(cycles)
        }
    }

    pub fn len(&self) -> usize {
        self.graph.node_count()
    }

    pub fn is_empty(&self) -> bool {
        self.graph.node_count() == 0
    }

    pub fn edge_count(&self) -> usize {
        self.graph.edge_count()
    }

    pub fn node(&self, address: &Address) -> Option<&Node> {
        self.by_address
            .get(address)
            .map(|&index| &self.graph[index])
    }

    /// The nodes `address` depends on directly, sorted by address.
    pub fn dependencies(&self, address: &Address) -> Vec<&Node> {
        self.neighbours(address, Direction::Incoming)
    }

    /// The nodes that depend directly on `address`, sorted by address.
    pub fn dependents(&self, address: &Address) -> Vec<&Node> {
        self.neighbours(address, Direction::Outgoing)
    }

    fn neighbours(&self, address: &Address, direction: Direction) -> Vec<&Node> {
        let Some(&index) = self.by_address.get(address) else {
            return Vec::new();
        };
        let mut nodes: Vec<&Node> = self
            .graph
            .neighbors_directed(index, direction)
            .map(|neighbour| &self.graph[neighbour])
            .collect();
        nodes.sort_by(|a, b| a.address.cmp(&b.address));
        nodes
    }

    /// Every node in dependency order; among nodes that are ready together, by address, so the order is stable.
    pub fn topological(&self) -> Vec<&Node> {
        let mut remaining: Vec<usize> = self
            .graph
            .node_indices()
            .map(|index| {
                self.graph
                    .neighbors_directed(index, Direction::Incoming)
                    .count()
            })
            .collect();
        let mut ready: BTreeSet<(&Address, NodeIndex)> = self
            .graph
            .node_indices()
            .filter(|index| remaining[index.index()] == 0)
            .map(|index| (&self.graph[index].address, index))
            .collect();
        let mut order = Vec::with_capacity(self.graph.node_count());
        while let Some((_, index)) = ready.pop_first() {
            order.push(&self.graph[index]);
            for next in self.graph.neighbors_directed(index, Direction::Outgoing) {
                remaining[next.index()] -= 1;
                if remaining[next.index()] == 0 {
                    ready.insert((&self.graph[next].address, next));
                }
            }
        }
        order
    }

    /// The graph in Graphviz dot, nodes and edges sorted.
    pub fn to_dot(&self) -> String {
        let mut out = String::from("digraph kip {\n  rankdir = LR;\n  node [shape = box];\n");
        for node in self.topological() {
            let style = if node.kind.is_none() {
                ", style = bold"
            } else {
                ""
            };
            let _ = writeln!(
                out,
                "  \"{}\" [label = \"{}\"{style}];",
                escape(&node.address.to_string()),
                escape(&node.address.to_string())
            );
        }
        let mut edges: Vec<(String, String, EdgeReason)> = self
            .graph
            .edge_references()
            .map(|edge| {
                (
                    self.graph[edge.source()].address.to_string(),
                    self.graph[edge.target()].address.to_string(),
                    edge.weight().0,
                )
            })
            .collect();
        edges.sort();
        for (from, to, reason) in edges {
            let style = match reason {
                EdgeReason::Nesting => "",
                EdgeReason::Reference => " [style = dashed]",
                EdgeReason::DependsOn => " [style = dotted]",
            };
            let _ = writeln!(
                out,
                "  \"{}\" -> \"{}\"{style};",
                escape(&from),
                escape(&to)
            );
        }
        out.push_str("}\n");
        out
    }

    fn cycles(&self) -> Vec<Diagnostic> {
        let mut diagnostics = Vec::new();
        for component in tarjan_scc(&self.graph) {
            let self_loop =
                component.len() == 1 && self.graph.contains_edge(component[0], component[0]);
            if component.len() < 2 && !self_loop {
                continue;
            }
            let members: BTreeSet<NodeIndex> = component.iter().copied().collect();
            let start = *component
                .iter()
                .min_by(|a, b| self.graph[**a].address.cmp(&self.graph[**b].address))
                .expect("a component is never empty");
            let cycle = self.cycle_through(start, &members);
            let names: Vec<String> = cycle
                .iter()
                .chain(std::iter::once(&start))
                .map(|&index| self.graph[index].address.to_string())
                .collect();
            // Point at the edge that leaves the first node, where the user wrote the reference.
            let next = cycle.get(1).copied().unwrap_or(start);
            let declared = self
                .graph
                .edges_connecting(start, next)
                .find_map(|edge| edge.weight().1.clone())
                .or_else(|| {
                    // The edge start → next may be nesting; then point at the reference that closes the cycle.
                    let last = *cycle.last().expect("a cycle has a node");
                    self.graph
                        .edges_connecting(last, start)
                        .find_map(|edge| edge.weight().1.clone())
                })
                .unwrap_or_else(|| self.graph[start].declared.clone());
            diagnostics.push(
                Diagnostic::error(
                    "Dependency cycle",
                    format!(
                        "These {} depend on each other in a cycle, so none can be created first: {}. Remove one of \
                         the references or depends_on entries on the cycle.",
                        if cycle.len() == 1 { "node" } else { "nodes" },
                        names.join(" -> ")
                    ),
                )
                .at(declared.file, declared.span),
            );
        }
        diagnostics
    }

    /// A shortest cycle from `start` back to itself within `members`, as the list of nodes from `start`.
    fn cycle_through(&self, start: NodeIndex, members: &BTreeSet<NodeIndex>) -> Vec<NodeIndex> {
        let mut parent: HashMap<NodeIndex, NodeIndex> = HashMap::new();
        let mut queue = VecDeque::from([start]);
        while let Some(current) = queue.pop_front() {
            let mut successors: Vec<NodeIndex> = self
                .graph
                .neighbors_directed(current, Direction::Outgoing)
                .filter(|next| members.contains(next))
                .collect();
            successors.sort_by(|a, b| self.graph[*a].address.cmp(&self.graph[*b].address));
            for next in successors {
                if next == start {
                    let mut path = vec![current];
                    let mut at = current;
                    while at != start {
                        at = parent[&at];
                        path.push(at);
                    }
                    path.reverse();
                    return path;
                }
                if next != current && !parent.contains_key(&next) {
                    parent.insert(next, current);
                    queue.push_back(next);
                }
            }
        }
        vec![start]
    }
}

fn add_objects(
    graph: &mut DiGraph<Node, (EdgeReason, Option<Declared>)>,
    by_address: &mut foldhash::HashMap<Address, NodeIndex>,
    engine: &str,
    body: &Body,
) {
    for block in &body.blocks {
        if let Some(address) = &block.address {
            let node = Node {
                address: address.clone(),
                engine: engine.to_owned(),
                kind: Some(block.kind.clone()),
                declared: block.declared.clone(),
            };
            let index = graph.add_node(node);
            by_address.insert(graph[index].address.clone(), index);
        }
        add_objects(graph, by_address, engine, &block.body);
    }
}

/// How many objects `body` declares, nested ones included.
fn count_objects(body: &Body) -> usize {
    body.blocks
        .iter()
        .map(|block| usize::from(block.address.is_some()) + count_objects(&block.body))
        .sum()
}

fn escape(text: &str) -> String {
    text.replace('\\', "\\\\").replace('"', "\\\"")
}
